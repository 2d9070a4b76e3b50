"""Pretrain the miniature world's speech model: a tiny Whisper whose encoder learns word-level CTC on training voices.

    python -m world.pretrain_speech --train_dirs CLEAN_CLIPS_DIR [--speech_dir world/data/speech] \
        [--output_dir world/models/speech]

The encoder sees exactly what BLSP will feed it (per-clip log-mel, real length, padded frames masked through
`modeling_blsp.encode_variable_length`), only on train sentences in training voices: clean clips (`--train_dirs`,
written by `world.build_speech.pretraining_plan`) that are speed-perturbed and then "recorded" afresh every time they
are read (random silences, level and background noise, as `world.build_speech` records the shipped clips).
SpecAugment-style masks slowed convergence without helping within a few minutes of training, so there are none.
WERs are measured on every split of `--speech_dir`. It is saved as an ordinary
`WhisperModel` checkpoint with its `WhisperFeatureExtractor` (the decoder is untrained: BLSP uses only the encoder);
the CTC head and its word list are saved next to it for `world.cascade`.
"""

import argparse
import json
import os
import random
import tempfile

import numpy as np
import soxr
import torch
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import Dataset
from transformers import Trainer, TrainingArguments, WhisperConfig, WhisperFeatureExtractor, WhisperModel
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from modeling_blsp import encode_variable_length
from processing_blsp import load_audio, log_mel, pad_log_mels
from world.build_speech import draw_recording, record
from world.cascade import (
    BLANK,
    CTC_HEAD_FILE,
    CTC_VOCAB_FILE,
    CtcHead,
    SpeechRecognizer,
)

ENCODER_CONFIG = dict(
    d_model=128,
    encoder_layers=3,
    encoder_attention_heads=4,
    num_mel_bins=80,
    max_source_positions=1500,
)
DECODER_CONFIG = dict(
    decoder_layers=1,
    decoder_attention_heads=4,
    decoder_ffn_dim=128,
    vocab_size=32,
    max_target_positions=32,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    decoder_start_token_id=3,
    begin_suppress_tokens=None,
)
SPEED_RANGE = (0.85, 1.15)


def read_split(directory: str) -> list[dict]:
    with open(os.path.join(directory, "metadata.jsonl")) as file:
        return [json.loads(line) for line in file]


def word_list(texts: list[str]) -> list[str]:
    """The CTC labels: the blank, then every word of the texts in sorted order."""
    return [BLANK] + sorted({word for text in texts for word in text.split()})


class ClipDataset(Dataset):
    """Decoded clips of audiofolders with their word label ids."""

    def __init__(self, directories: list[str], vocab: list[str], sampling_rate: int):
        index = {word: position for position, word in enumerate(vocab)}
        self.rows = [
            {
                "samples": load_audio(os.path.join(directory, row["file_name"]), sampling_rate),
                "label_ids": [index[word] for word in row["text"].split()],
            }
            for directory in directories
            for row in read_split(directory)
        ]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return self.rows[index]


def speed_perturb(samples: np.ndarray, sampling_rate: int, rng: random.Random) -> np.ndarray:
    """Play the clip faster or slower (pitch moves with it) by a random factor in `SPEED_RANGE`."""
    factor = rng.uniform(*SPEED_RANGE)
    return soxr.resample(samples, round(sampling_rate * factor), sampling_rate).astype(np.float32)


class CtcCollator:
    """Featurise a batch of speed-perturbed, freshly recorded clips: padded log-mel, frame lengths, padded labels."""

    def __init__(self, feature_extractor: WhisperFeatureExtractor, seed: int):
        self.feature_extractor = feature_extractor
        self.rng, self.noise_rng = random.Random(seed), np.random.default_rng(seed)

    def features(self, samples: np.ndarray) -> np.ndarray:
        samples = speed_perturb(samples, self.feature_extractor.sampling_rate, self.rng)
        samples = record(samples, draw_recording(self.rng), self.noise_rng)
        return log_mel(self.feature_extractor, samples)

    def __call__(self, rows: list[dict]) -> dict:
        inputs = pad_log_mels([self.features(row["samples"]) for row in rows])
        label_lengths = torch.tensor([len(row["label_ids"]) for row in rows])
        labels = torch.zeros(len(rows), int(label_lengths.max()), dtype=torch.long)
        for index, row in enumerate(rows):
            labels[index, : len(row["label_ids"])] = torch.tensor(row["label_ids"])
        return {
            "input_features": inputs["input_features"],
            "frame_lengths": inputs["input_features_mask"].sum(-1),
            "labels": labels,
            "label_lengths": label_lengths,
        }


class EncoderForCtc(nn.Module):
    """A Whisper encoder run as BLSP runs it, with a CTC head: the pretraining model."""

    def __init__(self, encoder: WhisperEncoder, vocab_size: int):
        super().__init__()
        self.encoder = encoder
        self.head = CtcHead(encoder.config.d_model, vocab_size)

    def forward(self, input_features, frame_lengths, labels=None, label_lengths=None) -> dict:
        hidden_states, lengths = encode_variable_length(self.encoder, input_features, frame_lengths)
        log_probs = self.head(hidden_states)
        output = {"log_probs": log_probs, "lengths": lengths}
        if labels is not None:
            output["loss"] = nn.functional.ctc_loss(
                log_probs.transpose(0, 1), labels, lengths, label_lengths, zero_infinity=True
            )
        return output


def whisper_config(encoder_config: dict) -> WhisperConfig:
    return WhisperConfig(**encoder_config, **DECODER_CONFIG)


def new_encoder(encoder_config: dict, seed: int) -> WhisperEncoder:
    """A randomly initialised encoder whose convolutions keep the scale of their input (Kaiming).

    With Whisper's own initialisation (std 0.02) the convolutions' output is tiny next to the sinusoidal positions
    added to it, and CTC pretraining takes several times longer to get going.
    """
    torch.manual_seed(seed)
    encoder = WhisperEncoder(whisper_config(encoder_config))
    for conv in (encoder.conv1, encoder.conv2):
        nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
    return encoder


def train(model: EncoderForCtc, dataset: ClipDataset, collator: CtcCollator, args: argparse.Namespace):
    """Train encoder and head with Trainer (no checkpoints written)."""
    with tempfile.TemporaryDirectory() as scratch:
        training_args = TrainingArguments(
            output_dir=scratch,
            per_device_train_batch_size=args.batch_size,
            max_steps=args.max_steps,
            learning_rate=args.learning_rate,
            weight_decay=0.01,
            warmup_steps=args.warmup_steps,
            lr_scheduler_type="cosine",
            max_grad_norm=1.0,
            logging_steps=25,
            save_strategy="no",
            report_to="none",
            seed=args.seed,
            use_cpu=True,
            remove_unused_columns=False,
            dataloader_num_workers=args.dataloader_num_workers,
            dataloader_persistent_workers=args.dataloader_num_workers > 0,
        )
        Trainer(model=model, args=training_args, train_dataset=dataset, data_collator=collator).train()


def save_speech_model(model: EncoderForCtc, feature_extractor, vocab: list[str], output_dir: str):
    """A `WhisperModel` checkpoint holding the trained encoder, its feature extractor, the CTC head and word list."""
    whisper = WhisperModel(model.encoder.config)
    whisper.encoder.load_state_dict(model.encoder.state_dict())
    whisper.save_pretrained(output_dir)
    feature_extractor.save_pretrained(output_dir)
    save_file(model.head.state_dict(), os.path.join(output_dir, CTC_HEAD_FILE))
    with open(os.path.join(output_dir, CTC_VOCAB_FILE), "w") as file:
        json.dump(vocab, file)


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Word edit distance summed over the pairs, divided by the number of reference words."""
    errors = 0
    for reference, hypothesis in zip(references, hypotheses):
        ref, hyp = reference.split(), hypothesis.split()
        row = list(range(len(hyp) + 1))
        for i, ref_word in enumerate(ref, 1):
            previous, row[0] = row[0], i
            for j, hyp_word in enumerate(hyp, 1):
                previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (ref_word != hyp_word))
        errors += row[-1]
    return errors / sum(len(reference.split()) for reference in references)


def evaluate_speech_model(model_dir: str, speech_dir: str) -> dict[str, float]:
    """WER of the saved model's greedy CTC transcripts on every split of `speech_dir`."""
    recognizer = SpeechRecognizer(model_dir)
    rates = {}
    for split in sorted(os.listdir(speech_dir)):
        rows = read_split(os.path.join(speech_dir, split))
        transcripts = recognizer.transcribe([os.path.join(speech_dir, split, row["file_name"]) for row in rows])
        rates[split] = round(word_error_rate([row["text"] for row in rows], transcripts), 4)
    return rates


def pretrain_speech(args: argparse.Namespace) -> dict:
    """Build, train, save and evaluate the speech model; returns the settings and WERs for the manifest."""
    torch.set_num_threads(args.threads)
    vocab = word_list([row["text"] for directory in args.train_dirs for row in read_split(directory)])
    encoder_config = {
        **ENCODER_CONFIG,
        "d_model": args.d_model,
        "encoder_layers": args.encoder_layers,
        "encoder_ffn_dim": 2 * args.d_model,
    }
    feature_extractor = WhisperFeatureExtractor(feature_size=encoder_config["num_mel_bins"])
    model = EncoderForCtc(new_encoder(encoder_config, args.seed), len(vocab))
    dataset = ClipDataset(args.train_dirs, vocab, feature_extractor.sampling_rate)
    train(model, dataset, CtcCollator(feature_extractor, seed=args.seed), args)
    save_speech_model(model, feature_extractor, vocab, args.output_dir)
    not_settings = ("output_dir", "speech_dir", "train_dirs", "threads", "d_model", "encoder_layers")  # or in "encoder"
    settings = {key: value for key, value in vars(args).items() if key not in not_settings}
    return {
        "settings": {**settings, "encoder": encoder_config, "ctc_vocab": vocab},
        "encoder_parameters": sum(parameter.numel() for parameter in model.encoder.parameters()),
        "ctc_wer": evaluate_speech_model(args.output_dir, args.speech_dir),
    }


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train_dirs", nargs="+", required=True, help="Clean audiofolders to train on.")
    parser.add_argument("--speech_dir", default="world/data/speech", help="Every split in it is scored.")
    parser.add_argument("--output_dir", default="world/models/speech")
    parser.add_argument("--d_model", type=int, default=ENCODER_CONFIG["d_model"])
    parser.add_argument("--encoder_layers", type=int, default=ENCODER_CONFIG["encoder_layers"])
    parser.add_argument("--max_steps", type=int, default=4000)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--warmup_steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch (at most the free cores).")
    parser.add_argument(
        "--dataloader_num_workers", type=int, default=1, help="Processes that record and featurise the clips."
    )
    return parser


def main():
    print(json.dumps(pretrain_speech(argument_parser().parse_args()), indent=2))


if __name__ == "__main__":
    main()
