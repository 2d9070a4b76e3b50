"""Adapter-only checkpoints: only the trained weights are saved; the config names the frozen bases, loaded by name."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from modeling_blsp import BASE_MODULES, BlspForConditionalGeneration
from tests.helpers.launching import user_env

LOAD_AND_GENERATE = """
import json, sys
import numpy as np
import torch
from transformers import AutoModel, AutoProcessor, pipeline
path, whisper, llm = sys.argv[1:4]
bases = {"speech_model_name_or_path": whisper, "text_model_name_or_path": llm}
model = AutoModel.from_pretrained(path, trust_remote_code=True, **bases)
processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
clip = np.sin(np.arange(16000 * 2) / 7.0).astype(np.float32) * 0.3
inputs = processor(text=processor.render_prompt("Repeat the text."), audio=clip)
with torch.no_grad():
    logits = model(**inputs).logits
speech_llm = pipeline(model=path, trust_remote_code=True, model_kwargs=bases)
result = speech_llm(clip, instruction="Repeat the text.", max_new_tokens=4)
result = {"model": type(model).__name__, "logits": logits[0, -1, :8].tolist(), "text": result["generated_text"]}
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def full_and_adapter_only(saved_blsp, tiny_checkpoints, tmp_path_factory):
    """The tiny Qwen2 BLSP checkpoint, and the same model saved adapter-only, naming Hub-like ids for its bases."""
    from processing_blsp import BlspProcessor

    full = BlspForConditionalGeneration.from_pretrained(saved_blsp["qwen2"])
    directory = str(tmp_path_factory.mktemp("adapter_only"))
    full.config.adapter_only = True
    full.config.speech_model_name_or_path = "openai/whisper-tiny.en"
    full.config.text_model_name_or_path = "HuggingFaceTB/SmolLM2-135M-Instruct"
    full.save_pretrained(directory)
    BlspProcessor.from_pretrained(saved_blsp["qwen2"]).save_pretrained(directory)
    return BlspForConditionalGeneration.from_pretrained(saved_blsp["qwen2"]), directory


def test_only_the_adapter_is_saved(full_and_adapter_only):
    full, directory = full_and_adapter_only
    saved = load_file(os.path.join(directory, "model.safetensors"))
    adapter = {name: tensor for name, tensor in full.state_dict().items() if not name.startswith(BASE_MODULES)}
    assert sorted(saved) == sorted(adapter) and all(name.startswith("adapter.") for name in saved)
    assert all(torch.equal(saved[name], adapter[name]) for name in saved)
    with open(os.path.join(directory, "config.json")) as file:
        config = json.load(file)
    assert config["adapter_only"] is True
    assert config["text_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_loads_in_a_fresh_process_with_local_bases(full_and_adapter_only, tiny_checkpoints, tmp_path):
    full, directory = full_and_adapter_only
    env = user_env()
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    completed = subprocess.run(
        [sys.executable, "-c", LOAD_AND_GENERATE, directory, tiny_checkpoints["whisper"], tiny_checkpoints["qwen2"]],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["model"] == "BlspForConditionalGeneration"

    import numpy as np

    from processing_blsp import BlspProcessor

    processor = BlspProcessor.from_pretrained(directory)
    clip = np.sin(np.arange(16000 * 2) / 7.0).astype(np.float32) * 0.3
    with torch.no_grad():
        expected = full.eval()(**processor(text=processor.render_prompt("Repeat the text."), audio=clip)).logits
    assert result["logits"] == pytest.approx(expected[0, -1, :8].tolist(), abs=1e-5)


def test_loaded_weights_equal_the_full_checkpoint(full_and_adapter_only, tiny_checkpoints):
    full, directory = full_and_adapter_only
    loaded = BlspForConditionalGeneration.from_pretrained(
        directory,
        speech_model_name_or_path=tiny_checkpoints["whisper"],
        text_model_name_or_path=tiny_checkpoints["qwen2"],
    )
    expected, got = full.state_dict(), loaded.state_dict()
    assert sorted(got) == sorted(expected)
    assert all(torch.equal(got[name], expected[name]) for name in expected)


def test_missing_base_names_the_checkpoint_and_how_to_point_elsewhere(full_and_adapter_only):
    _, directory = full_and_adapter_only
    with pytest.raises(OSError, match="speech_model_name_or_path=.*text_model_name_or_path="):
        BlspForConditionalGeneration.from_pretrained(directory)


def test_a_base_of_another_shape_is_refused(full_and_adapter_only, tiny_checkpoints):
    _, directory = full_and_adapter_only
    with pytest.raises(ValueError, match="not the base this adapter was trained on"):
        BlspForConditionalGeneration.from_pretrained(
            directory,
            speech_model_name_or_path=tiny_checkpoints["whisper"],
            text_model_name_or_path=tiny_checkpoints["llama"],
        )


def test_adapter_only_config_must_name_its_bases():
    from configuration_blsp import BlspConfig

    with pytest.raises(ValueError, match="must name its frozen bases"):
        BlspConfig(adapter_only=True, speech_model_name_or_path="openai/whisper-tiny.en")
