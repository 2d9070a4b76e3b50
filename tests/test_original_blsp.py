"""The converter of the original BLSP release: the converted model, loaded in a fresh process, answers as the original.

The original is `tests/helpers/original_blsp.py`: a tiny checkpoint in the release's layout and a reference of its
forward written from its code (sentencepiece tokenization, 30 s features, unmasked encoder, unmasked subsampler).
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch
from safetensors.torch import load_file

from conversion.convert_original_blsp_to_hf import main as convert_main
from modeling_blsp import BlspForConditionalGeneration
from processing_blsp import BlspProcessor
from tests.helpers.launching import user_env
from tests.helpers.original_blsp import OriginalBlsp, save_tiny_original_blsp
from tests.helpers.speech import CLIPS_DIR

INSTRUCTION = "Please transcribe the following audio."
NEW_TOKENS = 40  # greedy tokens compared (the converted generation config's 128 is checked in its file)
# float32 on both sides, the same transformers layers: measured differences are below 1e-5 (printed by -rP)
LOGITS_ATOL = 1e-4


@pytest.fixture(scope="module")
def original(tmp_path_factory) -> str:
    """A tiny original-layout release, its weights in two shards with an index."""
    return save_tiny_original_blsp(str(tmp_path_factory.mktemp("original_blsp")), shards=2)


@pytest.fixture(scope="module")
def converted(original, tmp_path_factory) -> str:
    output_dir = str(tmp_path_factory.mktemp("converted_blsp"))
    convert_main(["--checkpoint_dir", original, "--output_dir", output_dir])
    return output_dir


@pytest.fixture(scope="module")
def clip_paths(tmp_path_factory) -> list[str]:
    """Three speech clips as float WAV files: a whole number of hops (160 samples), and two that are not."""
    directory = tmp_path_factory.mktemp("clips")
    paths = []
    for index, length in enumerate((24000, 30001, 17777)):
        samples = soundfile.read(os.path.join(CLIPS_DIR, f"clip_00{index}.flac"), dtype="float32")[0][:length]
        assert len(samples) == length
        paths.append(str(directory / f"clip_{index}.wav"))
        soundfile.write(paths[-1], samples, 16000, subtype="FLOAT")
    return paths


CONVERTED_OUTPUTS = r"""
import sys
import soundfile
import torch
from transformers import AutoModel, AutoProcessor, pipeline

try:
    import modeling_blsp  # noqa: F401
    sys.exit("the project must not be importable here")
except ImportError:
    pass

path, output, instruction, new_tokens, *clip_paths = sys.argv[1:]
new_tokens = int(new_tokens)
model = AutoModel.from_pretrained(path, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
clips = [soundfile.read(clip_path, dtype="float32")[0] for clip_path in clip_paths]
prompt = processor.render_prompt(instruction)
results = {"model": type(model).__name__, "dtype": str(model.dtype), "prompt": prompt, "alone": []}
with torch.no_grad():
    for clip in clips:
        inputs = processor(text=prompt, audio=clip)
        results["alone"].append({
            "input_ids": inputs["input_ids"][0],
            "logits": model(**inputs).logits[0],
            "tokens": model.generate(**inputs, max_new_tokens=new_tokens)[0, inputs["input_ids"].shape[1]:],
        })
    batch = processor(text=[prompt] * len(clips), audio=clips)
    results["batch"] = {
        "input_ids": batch["input_ids"],
        "logits": model(**batch).logits,
        "tokens": model.generate(**batch, max_new_tokens=new_tokens)[:, batch["input_ids"].shape[1]:],
    }
results["text"] = processor.decode(results["alone"][0]["tokens"], skip_special_tokens=True).strip()
speech_llm = pipeline(model=path, trust_remote_code=True)
answer = speech_llm(clip_paths[0], instruction=instruction, max_new_tokens=new_tokens)
results["pipeline_text"] = answer["generated_text"]
torch.save(results, output)
"""


@pytest.fixture(scope="module")
def converted_outputs(converted, clip_paths, tmp_path_factory) -> dict:
    """What the converted checkpoint computes, loaded in a fresh process from elsewhere, the project not importable."""
    workdir = tmp_path_factory.mktemp("elsewhere")
    output = str(workdir / "outputs.pt")
    env = user_env()
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(workdir / "hf_home"), OMP_NUM_THREADS="1")
    completed = subprocess.run(
        [sys.executable, "-c", CONVERTED_OUTPUTS, converted, output, INSTRUCTION, str(NEW_TOKENS), *clip_paths],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return torch.load(output, weights_only=True)


@pytest.fixture(scope="module")
def reference(original) -> OriginalBlsp:
    return OriginalBlsp.from_original(original)


def read_clips(clip_paths: list[str]) -> list[np.ndarray]:
    return [soundfile.read(path, dtype="float32")[0] for path in clip_paths]


def test_converted_checkpoint_holds_the_original_settings(converted):
    files = set(os.listdir(converted))
    assert {"model.safetensors", "config.json", "processor_config.json", "generation_config.json"} <= files
    assert {"configuration_blsp.py", "modeling_blsp.py", "processing_blsp.py", "pipeline_blsp.py"} <= files
    assert not any(name.endswith(".bin") for name in files)
    with open(os.path.join(converted, "config.json")) as file:
        config = json.load(file)
    assert (config["model_type"], config["encoder_padding"], config["dtype"]) == ("blsp", "unmasked", "float32")
    assert config["auto_map"]["AutoModel"] == "modeling_blsp.BlspForConditionalGeneration"
    with open(os.path.join(converted, "processor_config.json")) as file:
        processor = json.load(file)
    assert processor["feature_padding"] == "max_length"
    assert (processor["speech_separator"], processor["prompt_tokenization"]) == ("", "segments")
    with open(os.path.join(converted, "generation_config.json")) as file:
        generation = json.load(file)
    assert (generation["max_new_tokens"], generation["min_new_tokens"], generation["do_sample"]) == (128, 1, False)


def test_single_file_and_sharded_releases_convert_to_the_same_weights(original, converted, tmp_path):
    single = save_tiny_original_blsp(str(tmp_path / "single"), shards=1)
    assert "pytorch_model.bin" in os.listdir(single) and "pytorch_model.bin" not in os.listdir(original)
    convert_main(["--checkpoint_dir", single, "--output_dir", str(tmp_path / "out")])
    from_single = load_file(str(tmp_path / "out" / "model.safetensors"))
    from_shards = load_file(os.path.join(converted, "model.safetensors"))
    assert from_single.keys() == from_shards.keys()
    assert all(torch.equal(from_single[name], from_shards[name]) for name in from_shards)


def test_converted_model_in_a_fresh_process_answers_as_the_original(converted_outputs, reference, clip_paths):
    assert converted_outputs["model"] == "BlspForConditionalGeneration"
    assert converted_outputs["dtype"] == "torch.float32"
    differences = []
    clips = read_clips(clip_paths)
    prefix, suffix = reference.prompt_ids(INSTRUCTION)
    for clip, alone in zip(clips, converted_outputs["alone"]):
        _, speech_length = reference.inputs_embeds(INSTRUCTION, clip)
        ids = alone["input_ids"].tolist()
        speech_token_id = ids[len(prefix)]
        assert ids == prefix + [speech_token_id] * speech_length + suffix
        expected = reference.logits(INSTRUCTION, clip)
        differences.append(float((alone["logits"] - expected).abs().max()))
        torch.testing.assert_close(alone["logits"], expected, atol=LOGITS_ATOL, rtol=0)
        assert alone["tokens"].tolist() == reference.generate(INSTRUCTION, clip, NEW_TOKENS)
    print(f"converted vs original, largest logit difference: {max(differences):.2e}")
    assert converted_outputs["pipeline_text"] == converted_outputs["text"]


def test_the_comparison_is_sensitive_to_speech_and_to_the_original_settings(converted, reference, clip_paths):
    """Different speech changes the answer, and our default settings would not reproduce the original."""
    clips = read_clips(clip_paths)
    first, second = (reference.logits(INSTRUCTION, clip)[-1] for clip in clips[:2])
    assert (first - second).abs().max() > 0.5
    model = BlspForConditionalGeneration.from_pretrained(converted).eval()
    original_processor = BlspProcessor.from_pretrained(converted)
    inputs = original_processor(text=original_processor.render_prompt(INSTRUCTION), audio=clips[0])
    model.config.encoder_padding = "longest"  # our default: the encoder on the real frames only, the padding masked
    default_processor = BlspProcessor(original_processor.feature_extractor, original_processor.tokenizer)
    default_inputs = default_processor(text=default_processor.render_prompt(INSTRUCTION), audio=clips[0])
    prefix, suffix = reference.prompt_ids(INSTRUCTION)
    assert default_inputs["input_ids"][0, : len(prefix)].tolist() != prefix
    with torch.no_grad():
        masked = model(**inputs).logits[0]
    assert (masked - reference.logits(INSTRUCTION, clips[0])).abs().max() > 1e-2


def test_unmasked_encoder_asks_for_30_second_features(converted, clip_paths):
    model = BlspForConditionalGeneration.from_pretrained(converted).eval()
    processor = BlspProcessor.from_pretrained(converted, feature_padding="longest")
    inputs = processor(text=processor.render_prompt(INSTRUCTION), audio=read_clips(clip_paths)[0])
    with pytest.raises(ValueError, match="feature_padding='max_length'"), torch.no_grad():
        model(**inputs)


def test_converted_model_batched_equals_alone(converted_outputs):
    batch = converted_outputs["batch"]
    for row, alone in enumerate(converted_outputs["alone"]):
        length = alone["input_ids"].shape[0]
        assert batch["input_ids"][row, -length:].tolist() == alone["input_ids"].tolist()
        torch.testing.assert_close(batch["logits"][row, -length:], alone["logits"], atol=LOGITS_ATOL, rtol=0)
        tokens = alone["tokens"].tolist()
        assert batch["tokens"][row, : len(tokens)].tolist() == tokens


def test_chat_messages_give_the_original_prompt(converted, clip_paths):
    processor = BlspProcessor.from_pretrained(converted)
    clip = read_clips(clip_paths)[0]
    messages = [{"role": "user", "content": [{"type": "text", "text": INSTRUCTION}, {"type": "audio", "audio": clip}]}]
    from_chat = processor.apply_chat_template(messages)
    from_prompt = processor(text=processor.render_prompt(INSTRUCTION), audio=clip)
    assert from_chat["input_ids"].tolist() == from_prompt["input_ids"].tolist()


def test_converter_rejects_a_folder_that_is_not_the_original_release(converted, tmp_path):
    with pytest.raises(ValueError, match="model_type 'blsp'"):
        convert_main(["--checkpoint_dir", converted, "--output_dir", str(tmp_path / "out")])
    with pytest.raises(FileNotFoundError, match="config.json"):
        convert_main(["--checkpoint_dir", str(tmp_path), "--output_dir", str(tmp_path / "out")])


def test_converter_refuses_its_input_another_model_and_a_release_lacking_a_file(original, converted, tmp_path):
    """Nothing is written over the release, over another model without --overwrite_output_dir, or at all when the
    release lacks its tokenizer or feature extractor; with the flag the output is replaced whole."""
    with pytest.raises(ValueError, match="is the release itself"):
        convert_main(["--checkpoint_dir", original, "--output_dir", original])
    other_model = str(tmp_path / "other")
    shutil.copytree(converted, other_model)
    with pytest.raises(ValueError, match="already holds files .*--overwrite_output_dir"):
        convert_main(["--checkpoint_dir", original, "--output_dir", other_model])
    for name, what in (("tokenizer.model", "a tokenizer"), ("preprocessor_config.json", "the feature extractor")):
        release = str(tmp_path / f"without-{name}")
        shutil.copytree(original, release)
        os.remove(os.path.join(release, name))
        output_dir = tmp_path / f"out-{name}"
        with pytest.raises(FileNotFoundError, match=f"lacks {what}"):
            convert_main(["--checkpoint_dir", release, "--output_dir", str(output_dir)])
        assert not output_dir.exists()
    (tmp_path / "other" / "stale.txt").write_text("from another model")
    convert_main(["--checkpoint_dir", original, "--output_dir", other_model, "--overwrite_output_dir"])
    assert sorted(os.listdir(other_model)) == sorted(os.listdir(converted))
