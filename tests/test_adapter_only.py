"""Adapter-only checkpoints: only the trained weights are saved; the config names the frozen bases, loaded by name."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

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


# ------------------------------------------------------------------------- issue 30, group 6: identity, not shape


def perturbed_copy(source: str, directory: str, model_class) -> str:
    """A copy of the checkpoint at `source` of the same shape whose weights differ a little (as SmolLM2-135M and its
    -Instruct, or whisper-tiny and tiny.en, do)."""
    model = model_class.from_pretrained(source)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 1e-2)
    model.save_pretrained(directory)
    return directory


def bases(tiny_checkpoints, **overrides) -> dict:
    names = {
        "speech_model_name_or_path": tiny_checkpoints["whisper"],
        "text_model_name_or_path": tiny_checkpoints["qwen2"],
    }
    return {**names, **overrides}


def edited_copy(directory: str, target: str, config_edit=None, weights_edit=None) -> str:
    """A copy of the adapter-only checkpoint at `directory` with its config.json and weights edited."""
    shutil.copytree(directory, target)
    with open(os.path.join(target, "config.json")) as file:
        config = json.load(file)
    if config_edit is not None:
        config_edit(config)
        with open(os.path.join(target, "config.json"), "w") as file:
            json.dump(config, file)
    if weights_edit is not None:
        path = os.path.join(target, "model.safetensors")
        state = load_file(path)
        weights_edit(state)
        save_file(state, path, metadata={"format": "pt"})
    return target


def test_the_bases_fingerprints_are_recorded_at_save(full_and_adapter_only):
    _, directory = full_and_adapter_only
    with open(os.path.join(directory, "config.json")) as file:
        recorded = json.load(file)["base_fingerprints"]
    assert sorted(recorded) == ["speech", "text"]
    assert all(sorted(record) == ["bfloat16", "float16", "float32"] for record in recorded.values())


@pytest.mark.parametrize("base", ["speech", "text"])
def test_a_base_of_the_same_shape_and_other_weights_is_refused(base, full_and_adapter_only, tiny_checkpoints, tmp_path):
    from transformers import AutoModelForCausalLM, WhisperModel

    _, directory = full_and_adapter_only
    model_class, key = (WhisperModel, "whisper") if base == "speech" else (AutoModelForCausalLM, "qwen2")
    other = perturbed_copy(tiny_checkpoints[key], str(tmp_path / "other"), model_class)
    pointed = bases(tiny_checkpoints, **{f"{base}_model_name_or_path": other})
    with pytest.raises(ValueError, match=f"'{other}' has the shape but not the weights.*check_base_identity=False"):
        BlspForConditionalGeneration.from_pretrained(directory, **pointed)
    loaded = BlspForConditionalGeneration.from_pretrained(directory, check_base_identity=False, **pointed)
    assert loaded.config.speech_model_name_or_path == pointed["speech_model_name_or_path"]


def test_the_same_weights_pass_in_another_copy_format_and_dtype(full_and_adapter_only, tiny_checkpoints, tmp_path):
    """The fingerprint is of the weights, not the files: a copy in shards, or a load cast to bfloat16, passes."""
    from transformers import AutoModelForCausalLM

    full, directory = full_and_adapter_only
    copy = str(tmp_path / "sharded")
    AutoModelForCausalLM.from_pretrained(tiny_checkpoints["qwen2"]).save_pretrained(copy, max_shard_size="20KB")
    assert os.path.isfile(os.path.join(copy, "model.safetensors.index.json"))
    loaded = BlspForConditionalGeneration.from_pretrained(
        directory, **bases(tiny_checkpoints, text_model_name_or_path=copy)
    )
    assert all(torch.equal(loaded.state_dict()[name], tensor) for name, tensor in full.state_dict().items())
    in_bf16 = BlspForConditionalGeneration.from_pretrained(directory, dtype=torch.bfloat16, **bases(tiny_checkpoints))
    assert in_bf16.language_model.dtype == torch.bfloat16


def test_a_checkpoint_saved_before_fingerprints_loads_with_a_warning(
    full_and_adapter_only, tiny_checkpoints, tmp_path, caplog
):
    from transformers.utils import logging

    _, directory = full_and_adapter_only
    old = edited_copy(directory, str(tmp_path / "old"), config_edit=lambda config: config.pop("base_fingerprints"))
    logging.get_logger("bases_blsp").warning_once.cache_clear()
    with caplog.at_level("WARNING"):
        logger = logging.get_logger("transformers")
        logger.addHandler(caplog.handler)
        try:
            BlspForConditionalGeneration.from_pretrained(old, **bases(tiny_checkpoints))
        finally:
            logger.removeHandler(caplog.handler)
    assert "records no fingerprint" in caplog.text


def test_loading_kwargs_reach_the_bases(full_and_adapter_only, tiny_checkpoints, monkeypatch):
    import bases_blsp

    _, directory = full_and_adapter_only
    calls = {}
    for name in ("AutoModel", "AutoModelForCausalLM"):
        original = getattr(bases_blsp, name).from_pretrained

        def spy(path, *args, _name=name, _original=original, **kwargs):
            calls[_name] = kwargs
            return _original(path, *args, **kwargs)

        monkeypatch.setattr(getattr(bases_blsp, name), "from_pretrained", spy)
    hub = {"cache_dir": "/nonexistent/cache", "token": "hf_secret", "local_files_only": True}
    model = BlspForConditionalGeneration.from_pretrained(
        directory, device_map="cpu", text_kwargs={"revision": "main"}, **hub, **bases(tiny_checkpoints)
    )
    for name in ("AutoModel", "AutoModelForCausalLM"):
        assert {key: calls[name][key] for key in hub} == hub
        assert calls[name]["device_map"] == "cpu"
    assert calls["AutoModelForCausalLM"]["revision"] == "main" and "revision" not in calls["AutoModel"]
    assert model.adapter.layer_norm.weight.device == model.speech_encoder.layer_norm.weight.device


def test_a_device_map_over_blsp_s_parts_is_split_between_the_bases():
    from bases_blsp import split_device_map

    speech, text, adapter = split_device_map(
        {"speech_encoder": "cpu", "adapter": "cpu", "language_model.model": "cpu", "language_model.lm_head": "meta"}
    )
    assert speech == {"device_map": {"": "cpu"}} and adapter == "cpu"
    assert text == {"device_map": {"model": "cpu", "lm_head": "meta"}}
    with pytest.raises(ValueError, match="not \\['encoder.layers.0'\\]"):
        split_device_map({"speech_encoder": "cpu", "encoder.layers.0": "cpu"})


def test_an_adapter_file_with_base_weights_is_refused_naming_the_file(
    full_and_adapter_only, tiny_checkpoints, tmp_path
):
    full, directory = full_and_adapter_only
    name = "language_model.model.embed_tokens.weight"

    def add_a_base_weight(state):
        state[name] = torch.zeros_like(full.state_dict()[name])

    edited = edited_copy(directory, str(tmp_path / "edited"), weights_edit=add_a_base_weight)
    weights_file = os.path.join(edited, "model.safetensors")
    with pytest.raises(ValueError, match=f"{weights_file} is an adapter-only .* holds 1 tensors .*{name}"):
        BlspForConditionalGeneration.from_pretrained(edited, **bases(tiny_checkpoints))


def test_a_full_config_without_base_weights_is_refused(full_and_adapter_only, tmp_path):
    _, directory = full_and_adapter_only
    edited = edited_copy(
        directory, str(tmp_path / "full"), config_edit=lambda config: config.update(adapter_only=False)
    )
    with pytest.raises(ValueError, match="says adapter_only: false but holds no weights for .* tensors of its bases"):
        BlspForConditionalGeneration.from_pretrained(edited)


def test_an_llm_as_the_speech_base_is_refused_naming_it(full_and_adapter_only, tiny_checkpoints):
    _, directory = full_and_adapter_only
    llm = tiny_checkpoints["qwen2"]
    message = f"'{llm}' is not a Whisper checkpoint \\(its model_type is 'qwen2'\\)"
    with pytest.raises(ValueError, match=message):
        BlspForConditionalGeneration.from_pretrained(
            directory, **bases(tiny_checkpoints, speech_model_name_or_path=llm)
        )
    with pytest.raises(ValueError, match=message):
        BlspForConditionalGeneration.from_speech_text_pretrained(llm, llm)


def test_fingerprint_samples_stay_inside_tensors_past_float32_precision():
    """The values a fingerprint samples are indexed exactly: float32 spacing rounded the last index of a tensor of
    2**24 + 4 elements (SmolLM2's embedding has 28,311,552) one past its end, which crashed saving the adapter."""
    from bases_blsp import weights_fingerprint

    module = torch.nn.Module()
    module.weight = torch.nn.Parameter(torch.zeros(2**24 + 4, dtype=torch.bfloat16), requires_grad=False)
    with torch.no_grad():
        module.weight[-1] = 1.0
    changed = weights_fingerprint(module, "bfloat16")
    with torch.no_grad():
        module.weight[-1] = 0.0
    assert changed != weights_fingerprint(module, "bfloat16")
