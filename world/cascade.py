"""Speech recognition with the world's speech model (its encoder + a CTC head), and the cascade baseline.

    from world.cascade import transcribe, cascade_responses
    transcribe(["world/data/speech/test_seen_voice/0000.flac"])          # ["the cat sees the bird"]
    cascade_responses(paths, "Translate the following text into Nalish.")  # transcript -> LLM

Features are those of `BlspProcessor` (per-clip Whisper log-mel, one frame per hop, no 30 s padding) and the
encoder runs as BLSP runs it (`modeling_blsp.encode_variable_length`), so what the CTC head was trained on is
exactly what a BLSP adapter sees.
"""

import json
import os

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoFeatureExtractor, AutoModel, AutoModelForCausalLM, AutoTokenizer

from modeling_blsp import encode_variable_length
from processing_blsp import load_audio, log_mel, pad_log_mels, render_prompt
from world.pretrain_llm import greedy_responses

WORLD_DIR = os.path.dirname(os.path.abspath(__file__))
SPEECH_MODEL_DIR = os.path.join(WORLD_DIR, "models", "speech")
LLM_DIR = os.path.join(WORLD_DIR, "models", "llm")
CTC_HEAD_FILE = "ctc_head.safetensors"
CTC_VOCAB_FILE = "ctc_vocab.json"
BLANK = "<blank>"


class CtcHead(nn.Module):
    """A linear layer from encoder states to CTC log-probabilities over words (index 0 is the blank)."""

    def __init__(self, hidden_size: int, vocab_size: int):
        super().__init__()
        self.proj = nn.Linear(hidden_size, vocab_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.proj(hidden_states).log_softmax(-1)


def ctc_greedy_decode(log_probs: torch.Tensor, lengths: torch.Tensor, vocab: list[str]) -> list[str]:
    """Best path per row: merge repeated labels, drop blanks, join the words."""
    transcripts = []
    for best, length in zip(log_probs.argmax(-1), lengths):
        labels = torch.unique_consecutive(best[:length]).tolist()
        transcripts.append(" ".join(vocab[label] for label in labels if label != 0))
    return transcripts


class SpeechRecognizer:
    """The saved speech model's encoder, feature extractor and CTC head, for greedy transcription."""

    def __init__(self, model_dir: str = SPEECH_MODEL_DIR):
        self.encoder = AutoModel.from_pretrained(model_dir).get_encoder().eval()
        self.feature_extractor = AutoFeatureExtractor.from_pretrained(model_dir)
        with open(os.path.join(model_dir, CTC_VOCAB_FILE)) as file:
            self.vocab = json.load(file)
        self.head = CtcHead(self.encoder.config.d_model, len(self.vocab))
        self.head.load_state_dict(load_file(os.path.join(model_dir, CTC_HEAD_FILE)))

    @torch.no_grad()
    def transcribe(self, audio: list, batch_size: int = 32) -> list[str]:
        """Transcripts of clips given as anything `processing_blsp.load_audio` reads (paths, arrays, dicts)."""
        transcripts = []
        for start in range(0, len(audio), batch_size):
            clips = [
                load_audio(clip, self.feature_extractor.sampling_rate) for clip in audio[start : start + batch_size]
            ]
            inputs = pad_log_mels([log_mel(self.feature_extractor, clip) for clip in clips])
            frame_lengths = inputs["input_features_mask"].sum(-1)
            hidden_states, lengths = encode_variable_length(self.encoder, inputs["input_features"], frame_lengths)
            transcripts += ctc_greedy_decode(self.head(hidden_states), lengths, self.vocab)
        return transcripts


def transcribe(audio: list, model_dir: str = SPEECH_MODEL_DIR) -> list[str]:
    """Greedy CTC transcripts of `audio` (paths or arrays) by the speech model saved in `model_dir`."""
    return SpeechRecognizer(model_dir).transcribe(audio)


def llm_responses(prompts: list[str], llm_dir: str = LLM_DIR) -> list[str]:
    """Greedy responses of the LLM saved in `llm_dir` to rendered prompts."""
    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    return greedy_responses(AutoModelForCausalLM.from_pretrained(llm_dir), tokenizer, prompts)


def cascade_responses(
    audio: list,
    instruction: str,
    layout: str = "instruction_first",
    speech_dir: str = SPEECH_MODEL_DIR,
    llm_dir: str = LLM_DIR,
) -> list[str]:
    """The cascade baseline: transcribe each clip, then ask the LLM `instruction` about the transcript."""
    tokenizer = AutoTokenizer.from_pretrained(llm_dir)
    prompts = [render_prompt(tokenizer, instruction, text, layout) for text in transcribe(audio, speech_dir)]
    return llm_responses(prompts, llm_dir)
