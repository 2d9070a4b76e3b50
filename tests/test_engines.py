"""The GPU user's training paths, run on CPU with tiny models: bf16, gradient checkpointing, FSDP2 and DDP with two
processes (gloo), launches that do not form one training, and the Mistral, Gemma 2 and Phi-3 families."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from datasets import Audio, Dataset
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file

import train_adapter
from blsp_steps.engines import LaunchError
from modeling_blsp import BlspForConditionalGeneration
from processing_blsp import BlspProcessor
from tests.helpers.launching import two_process_launch, user_env
from tests.helpers.steps import logged_losses
from tests.helpers.tiny_models import CHAT_FORMATS, save_tiny_chat_llm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INSTRUCTION = "Continue the following text."
CONTINUATIONS = ["the cat sat on the mat", "a quick brown fox", "the bird in the tree", "please translate the text"]
FAMILIES = list(CHAT_FORMATS)
LAUNCH_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def dataset(speech_corpus, tmp_path_factory) -> str:
    """8 clips with continuations, saved as generate_continuations.py saves them."""
    corpus_dir, rows = speech_corpus
    audio = []
    for row in rows:
        with open(os.path.join(corpus_dir, row["file_name"]), "rb") as file:
            audio.append({"path": row["file_name"], "bytes": file.read()})
    records = {
        "row_id": list(range(len(rows))),
        "audio": audio,
        "text": [row["text"] for row in rows],
        "continuation": [CONTINUATIONS[index % len(CONTINUATIONS)] for index in range(len(rows))],
    }
    data = Dataset.from_dict(records).cast_column("audio", Audio(decode=False))
    data.info.description = json.dumps({"instruction": INSTRUCTION, "prompt_layout": "instruction_first"})
    directory = str(tmp_path_factory.mktemp("engine_data"))
    data.save_to_disk(directory)
    return directory


def flags(settings: dict) -> list[str]:
    return [item for key, value in settings.items() for item in (f"--{key}", str(value))]


def run_settings(dataset: str, output_dir: str, max_steps: int, batch_size: int) -> dict:
    return {
        "dataset_name_or_path": dataset,
        "output_dir": output_dir,
        "max_steps": max_steps,
        "per_device_train_batch_size": batch_size,
        "learning_rate": 1e-2,
        "lr_scheduler_type": "constant",
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "seed": 0,
        "disable_tqdm": True,
    }


def weights(directory: str) -> dict[str, torch.Tensor]:
    return load_file(os.path.join(directory, "model.safetensors"))


# ----------------------------------------------------------------------------------- launches that are not one run


def test_processes_that_do_not_form_one_training_stop_at_once(initial_blsp, dataset, tmp_path, monkeypatch):
    """Two launched processes (WORLD_SIZE=2) but no --use_cpu on a CPU machine: the Trainer's world is 1."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    settings = {"model_name_or_path": initial_blsp, **run_settings(dataset, str(tmp_path), 1, 2)}
    with pytest.raises(LaunchError, match="pass --use_cpu"):
        train_adapter.main(flags(settings))
    assert not os.listdir(tmp_path)


def test_fsdp_that_accelerate_drops_on_cpu_stops(initial_blsp, dataset, tmp_path, monkeypatch):
    """accelerate launch with an FSDP config sets ACCELERATE_USE_FSDP; on CPU accelerate would train without it."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    settings = {"model_name_or_path": initial_blsp, "use_cpu": True, **run_settings(dataset, str(tmp_path), 1, 2)}
    with pytest.raises(LaunchError, match="FSDP was asked for"):
        train_adapter.main(flags(settings))


# ----------------------------------------------------------------------------------- bf16


@pytest.fixture(scope="module")
def bf16_run(tiny_checkpoints, responsive_llm, dataset, tmp_path_factory) -> str:
    """bf16 autocast, bf16 frozen weights, gradient checkpointing; a checkpoint (with optimizer state) at the end."""
    output_dir = str(tmp_path_factory.mktemp("bf16_run"))
    settings = {
        "speech_encoder_name_or_path": tiny_checkpoints["whisper"],
        "llm_name_or_path": responsive_llm,
        **run_settings(dataset, output_dir, 20, 16),
        "save_strategy": "steps",
        "save_steps": 20,
    }
    train_adapter.main(flags(settings) + ["--use_cpu", "--bf16", "--dtype", "bfloat16", "--gradient_checkpointing"])
    return output_dir


def test_bf16_loss_falls_with_float32_trainable_weights_and_optimizer_state(bf16_run):
    losses = logged_losses(bf16_run)
    assert sum(losses[-5:]) / 5 < 0.95 * sum(losses[:5]) / 5, losses
    saved = weights(bf16_run)
    dtypes = {part: {str(v.dtype) for k, v in saved.items() if k.startswith(part)} for part in ("adapter", "speech")}
    assert dtypes == {"adapter": {"torch.float32"}, "speech": {"torch.bfloat16"}}
    assert {str(v.dtype) for k, v in saved.items() if k.startswith("language_model.")} == {"torch.bfloat16"}
    optimizer = torch.load(os.path.join(bf16_run, "checkpoint-20", "optimizer.pt"), weights_only=False)
    assert len(optimizer["state"]) == len([key for key in saved if key.startswith("adapter.")])
    states = [value for state in optimizer["state"].values() for value in state.values() if value.ndim > 0]
    assert states and all(value.dtype == torch.float32 for value in states)


# ----------------------------------------------------------------------------------- gradient checkpointing


def adapter_and_lora_gradients(model, inputs: dict, checkpointing: bool) -> dict[str, torch.Tensor]:
    """Gradients of the trainable parameters after one forward and backward, as the Trainer runs them."""
    model.train()
    if checkpointing:
        model.activation_checkpointing_enable()  # what the Trainer calls for --gradient_checkpointing
        model.enable_input_require_grads()
    else:
        model.activation_checkpointing_disable()
    model.zero_grad()
    model(**inputs).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("lora", [False, True], ids=["frozen_llm", "lora"])
def test_gradient_checkpointing_gives_the_same_gradients(saved_blsp, speech_corpus, lora, monkeypatch):
    import transformers.modeling_utils

    model = BlspForConditionalGeneration.from_pretrained(saved_blsp["qwen2"])
    processor = BlspProcessor.from_pretrained(saved_blsp["qwen2"])
    train_adapter.select_trainable_parameters(model, train_speech_encoder=False)
    if lora:
        config = LoraConfig(r=4, lora_dropout=0.0, target_modules="all-linear", init_lora_weights=False)
        model.language_model = get_peft_model(model.language_model, config)
    corpus_dir, rows = speech_corpus
    clips = [os.path.join(corpus_dir, row["file_name"]) for row in rows[:2]]
    inputs = processor(
        text=[processor.render_prompt(INSTRUCTION)] * 2, audio=clips, text_target=["the cat sat", "a quick fox"]
    )
    checkpointed_calls = []
    checkpoint = transformers.modeling_utils.checkpoint

    def counting_checkpoint(*args, **kwargs):
        checkpointed_calls.append(1)
        return checkpoint(*args, **kwargs)

    monkeypatch.setattr(transformers.modeling_utils, "checkpoint", counting_checkpoint)
    plain = adapter_and_lora_gradients(model, inputs, checkpointing=False)
    assert not checkpointed_calls
    checkpointed = adapter_and_lora_gradients(model, inputs, checkpointing=True)
    assert len(checkpointed_calls) == 4  # 2 Whisper encoder layers + 2 LLM decoder layers
    assert plain.keys() == checkpointed.keys()
    assert any("lora_A" in name for name in plain) == lora
    for name, gradient in plain.items():
        assert gradient.abs().sum() > 0, name
        torch.testing.assert_close(checkpointed[name], gradient, rtol=1e-5, atol=1e-7, msg=name)


# ----------------------------------------------------------------------------------- FSDP2 and DDP, two processes


def launch(launcher: list[str], settings: dict, tmp_path, name: str) -> subprocess.CompletedProcess:
    """`accelerate launch` two processes on train_adapter.py with the settings as a YAML file."""
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(settings))
    command = two_process_launch(*launcher)
    if "fsdp.yaml" in launcher[-1]:  # accelerate enables FSDP on accelerators only: tests/helpers/fsdp_on_cpu.py
        command.append(os.path.join(ROOT, "tests", "helpers", "fsdp_on_cpu.py"))
    command += [os.path.join(ROOT, "train_adapter.py"), str(config)]
    result = subprocess.run(command, cwd=ROOT, env=LAUNCH_ENV, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result


def lora_run_settings(initial_blsp: str, dataset: str, output_dir: str) -> dict:
    """Two steps of 2 clips per process, LoRA merged at the end, a checkpoint after each step."""
    settings = {"model_name_or_path": initial_blsp, **run_settings(dataset, output_dir, 2, 2)}
    settings.update(use_cpu=True, log_level="info", save_strategy="steps", save_steps=1)
    settings.update(lora_r=4, lora_dropout=0.0, lora_save="merged")
    return settings


FSDP_LAUNCHER = ["--config_file", os.path.join(ROOT, "configs", "fsdp.yaml")]
DDP_LAUNCHER = ["--multi_gpu", "--num_machines", "1"]
WORLD_OF_TWO = "Total train batch size (w. parallel, distributed & accumulation) = 4"


@pytest.fixture(scope="module")
def fsdp_run(initial_blsp, dataset, tmp_path_factory) -> tuple[str, str]:
    tmp_path = tmp_path_factory.mktemp("fsdp")
    output_dir = str(tmp_path / "out")
    result = launch(FSDP_LAUNCHER, lora_run_settings(initial_blsp, dataset, output_dir), tmp_path, "fsdp")
    return output_dir, result.stdout + result.stderr


def test_fsdp_trains_as_one_world_of_two_with_sharded_checkpoints_and_frozen_weights(fsdp_run, initial_blsp):
    output_dir, log = fsdp_run
    assert WORLD_OF_TWO in log
    assert len(logged_losses(output_dir)) == 2
    assert os.path.isdir(os.path.join(output_dir, "checkpoint-1", "pytorch_model_fsdp_0"))  # sharded
    trained, initial = weights(output_dir), weights(initial_blsp)
    assert trained.keys() == initial.keys()  # LoRA merged: no peft keys
    frozen = [key for key in initial if key.startswith("speech_encoder.")]
    frozen += [key for key in initial if key.startswith("language_model.") and ("norm" in key or "embed" in key)]
    assert frozen and all(torch.equal(trained[key], initial[key]) for key in frozen)
    merged = [key for key in initial if key.startswith("language_model.") and key.endswith("q_proj.weight")]
    assert merged and all(not torch.equal(trained[key], initial[key]) for key in merged)


def test_fsdp_resumes_from_a_sharded_checkpoint(fsdp_run, initial_blsp, dataset, tmp_path):
    output_dir, _ = fsdp_run
    settings = lora_run_settings(initial_blsp, dataset, str(tmp_path / "resumed"))
    settings["resume_from_checkpoint"] = os.path.join(output_dir, "checkpoint-1")
    log = launch(FSDP_LAUNCHER, settings, tmp_path, "resume")
    assert "Resuming training from checkpoint with epoch 0 and global step 1" in log.stdout + log.stderr
    resumed_dir = str(tmp_path / "resumed")
    assert logged_losses(resumed_dir) == pytest.approx(logged_losses(output_dir), rel=1e-5)
    resumed, uninterrupted = weights(resumed_dir), weights(output_dir)
    assert resumed.keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=1e-4, msg=key)


def test_fsdp_merged_lora_equals_the_same_run_under_ddp(fsdp_run, initial_blsp, dataset, tmp_path):
    output_dir, _ = fsdp_run
    ddp_dir = str(tmp_path / "ddp")
    log = launch(DDP_LAUNCHER, lora_run_settings(initial_blsp, dataset, ddp_dir), tmp_path, "ddp")
    assert WORLD_OF_TWO in log.stdout + log.stderr
    assert logged_losses(output_dir) == pytest.approx(logged_losses(ddp_dir), rel=1e-5)
    ddp, fsdp, initial = weights(ddp_dir), weights(output_dir), weights(initial_blsp)
    assert ddp.keys() == fsdp.keys()
    # Two Adam steps at lr 1e-2 move each trained weight by about 2e-2; the engines differ by float rounding only.
    assert max(float((ddp[key] - initial[key]).abs().max()) for key in ddp) > 1e-2
    for key, value in ddp.items():
        torch.testing.assert_close(fsdp[key], value, rtol=0, atol=1e-4, msg=key)


# ----------------------------------------------------------------------------------- LLM families


@pytest.fixture(scope="module")
def family_runs(tiny_checkpoints, dataset, tmp_path_factory) -> dict[str, str]:
    """Per family: a new BLSP model built from the tiny chat LLM, trained one step and saved."""
    runs = {}
    for family in FAMILIES:
        torch.manual_seed(0)
        llm = save_tiny_chat_llm(str(tmp_path_factory.mktemp(family)), family)
        output_dir = str(tmp_path_factory.mktemp(f"{family}_run"))
        settings = {
            "speech_encoder_name_or_path": tiny_checkpoints["whisper"],
            "llm_name_or_path": llm,
            **run_settings(dataset, output_dir, 1, 4),
        }
        train_adapter.main(flags(settings) + ["--use_cpu"])
        runs[family] = output_dir
    return runs


FRESH_LOAD = r"""
import json, sys
import numpy as np
import torch
from transformers import AutoModel, AutoProcessor

try:
    import modeling_blsp  # noqa: F401
    sys.exit("the project must not be importable here")
except ImportError:
    pass

clip = (0.1 * np.random.default_rng(0).standard_normal(24000)).astype(np.float32)
results = {}
for path, dtype in json.loads(sys.argv[1]):
    model = AutoModel.from_pretrained(path, trust_remote_code=True, dtype=getattr(torch, dtype))
    processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
    prompt = processor.render_prompt("Continue the following text.")
    inputs = processor(text=prompt, audio=clip)
    generated = model.generate(**inputs, do_sample=False, max_new_tokens=3, min_new_tokens=3)
    results[f"{path}:{dtype}"] = {
        "new_tokens": generated.shape[1] - inputs["input_ids"].shape[1],
        "dtypes": sorted({str(p.dtype) for p in model.language_model.parameters()}),
        "prompt": prompt,
    }
print("RESULTS" + json.dumps(results))
"""


@pytest.fixture(scope="module")
def fresh_loads(bf16_run, fsdp_run, family_runs, tmp_path_factory) -> dict[str, dict]:
    """All saved models loaded with AutoModel and generating, in one fresh process in another directory."""
    checkpoints = [(bf16_run, "float32"), (bf16_run, "bfloat16"), (fsdp_run[0], "float32")]
    checkpoints += [(path, "float32") for path in family_runs.values()]
    directory = tmp_path_factory.mktemp("consumer")
    env = user_env()
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(directory / "hf_home"), OMP_NUM_THREADS="1")
    result = subprocess.run(
        [sys.executable, "-c", FRESH_LOAD, json.dumps(checkpoints)],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-5000:]
    return json.loads(result.stdout.split("RESULTS", 1)[1])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_bf16_trained_model_loads_and_generates_in_a_fresh_process(fresh_loads, bf16_run, dtype):
    result = fresh_loads[f"{bf16_run}:{dtype}"]
    assert result["new_tokens"] == 3
    assert result["dtypes"] == [f"torch.{dtype}"]


def test_fsdp_model_loads_and_generates_in_a_fresh_process(fresh_loads, fsdp_run):
    assert fresh_loads[f"{fsdp_run[0]}:float32"]["new_tokens"] == 3


@pytest.mark.parametrize("family", FAMILIES)
def test_llm_family_builds_trains_saves_and_generates(fresh_loads, family_runs, family):
    output_dir = family_runs[family]
    assert len(logged_losses(output_dir)) == 1
    with open(os.path.join(output_dir, "config.json")) as file:
        assert json.load(file)["text_config"]["model_type"] == family
    result = fresh_loads[f"{output_dir}:float32"]
    assert result["new_tokens"] == 3
    opening = {"mistral": "<s>[INST] ", "gemma2": "<s><start_of_turn>user\n", "phi3": "<|user|>\n"}[family]
    assert result["prompt"].startswith(opening)  # the family's own chat template
