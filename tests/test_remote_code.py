"""Saved checkpoints load with Auto classes and pipeline(trust_remote_code=True) in a fresh process, project absent."""

import json
import os
import subprocess
import sys

import pytest

from tests.helpers.launching import user_env
from world import build_demo

CODE_FILES = set(build_demo.HUB_CODE_FILES)

LOAD_AND_GENERATE = r"""
import json, sys
import numpy as np
import torch
from transformers import AutoConfig, AutoModel, AutoProcessor, pipeline

try:
    import modeling_blsp  # noqa: F401
    sys.exit("the project must not be importable here")
except ImportError:
    pass

path = sys.argv[1]
config = AutoConfig.from_pretrained(path, trust_remote_code=True)
model = AutoModel.from_pretrained(path, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
clip = (0.1 * np.random.default_rng(0).standard_normal(24000)).astype(np.float32)
inputs = processor(text=processor.render_prompt("Transcribe."), audio=clip)
generated = model.generate(**inputs, do_sample=False, max_new_tokens=5)[:, inputs["input_ids"].shape[1]:]
speech_llm = pipeline(model=path, trust_remote_code=True)
result = speech_llm({"array": clip, "sampling_rate": 16000}, instruction="Transcribe.", max_new_tokens=5)
print(json.dumps({
    "config": type(config).__name__,
    "model": type(model).__name__,
    "processor": type(processor).__name__,
    "pipeline": type(speech_llm).__name__,
    "tokens": generated[0].tolist(),
    "pipeline_text": result["generated_text"],
    "text": processor.batch_decode(generated, skip_special_tokens=True)[0].strip(),
}))
"""


def clean_env(tmp_path) -> dict[str, str]:
    return user_env(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))


@pytest.mark.parametrize("llm", ["llama", "qwen2"])
def test_checkpoint_loads_in_a_fresh_process(saved_blsp, llm, tmp_path):
    path = saved_blsp[llm]
    assert set(os.listdir(path)) >= CODE_FILES
    assert "model.safetensors" in os.listdir(path)
    with open(os.path.join(path, "config.json")) as file:
        config = json.load(file)
    assert config["auto_map"] == {
        "AutoConfig": "configuration_blsp.BlspConfig",
        "AutoModel": "modeling_blsp.BlspForConditionalGeneration",
        "AutoModelForMultimodalLM": "modeling_blsp.BlspForConditionalGeneration",
    }
    assert list(config["custom_pipelines"]) == ["blsp-speech-to-text"]
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    completed = subprocess.run(
        [sys.executable, "-c", LOAD_AND_GENERATE, path],
        cwd=workdir,
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["config"] == "BlspConfig"
    assert result["model"] == "BlspForConditionalGeneration"
    assert result["processor"] == "BlspProcessor"
    assert result["pipeline"] == "BlspPipeline"
    assert len(result["tokens"]) == 5
    assert result["pipeline_text"] == result["text"]


RESAVE = r"""
import os, sys
from transformers import AutoModel

model = AutoModel.from_pretrained(sys.argv[1], trust_remote_code=True)
code_dir = os.path.dirname(sys.modules[type(model).__module__].__file__)
assert not os.path.exists(os.path.join(code_dir, "pipeline_blsp.py")), "the model's code came with the pipeline"
model.save_pretrained(sys.argv[2])
"""


def test_a_model_loaded_from_its_checkpoints_code_saves_the_pipeline_too(saved_blsp, tmp_path):
    """The model's code does not import the pipeline; re-saved, the pipeline file still goes with it."""
    resaved = str(tmp_path / "resaved")
    completed = subprocess.run(
        [sys.executable, "-c", RESAVE, saved_blsp["qwen2"], resaved],
        cwd=tmp_path,
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    with (
        open(os.path.join(resaved, "pipeline_blsp.py")) as copy,
        open(os.path.join(build_demo.REPOSITORY, "pipeline_blsp.py")) as top,
    ):
        assert copy.read() == top.read()
    with open(os.path.join(resaved, "config.json")) as file:
        assert list(json.load(file)["custom_pipelines"]) == ["blsp-speech-to-text"]
