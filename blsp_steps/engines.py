"""Checks and helpers for the training engines of `train_adapter.py`: DDP, FSDP2, DeepSpeed ZeRO-2."""

import os

import torch
from peft import get_peft_model
from transformers import Trainer, TrainingArguments

from modeling_blsp import BlspForConditionalGeneration


class LaunchError(RuntimeError):
    """The launched processes do not form the training the launcher asked for."""


def launched_world_size(environ=os.environ) -> int:
    """How many processes the launcher (torchrun, `accelerate launch`, deepspeed) started: 1 without one."""
    return int(environ.get("WORLD_SIZE", "1"))


def check_one_training(training_args: TrainingArguments, environ=os.environ):
    """Stop when several processes were launched but each one trains alone (the Trainer's world size is 1).

    That happens on a machine without GPUs when the script is not told to train on CPU: every process would train on
    the whole dataset and write the same output folder.
    """
    launched = launched_world_size(environ)
    if launched > 1 and training_args.world_size != launched:
        raise LaunchError(
            f"{launched} processes were launched (WORLD_SIZE={launched}) but the Trainer sees a world of "
            f"{training_args.world_size} process(es): each process would train alone on the whole dataset and "
            f"write the same output folder. On CPU, pass --use_cpu to train_adapter.py (e.g. `accelerate launch "
            f"--multi_gpu --num_processes {launched} train_adapter.py ... --use_cpu`); on GPUs, check that every "
            "process sees a GPU (CUDA_VISIBLE_DEVICES)."
        )


def check_requested_engine(trainer: Trainer, environ=os.environ):
    """Stop when the launcher asked for FSDP or DeepSpeed but the Trainer would train without it.

    accelerate (1.x) enables FSDP and DeepSpeed only on accelerators: on CPU it silently falls back to plain DDP.
    """
    asked_for_deepspeed = bool(trainer.args.deepspeed) or environ.get("ACCELERATE_USE_DEEPSPEED", "") == "true"
    requested = {
        "FSDP": (environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true", trainer.is_fsdp_enabled),
        "DeepSpeed": (asked_for_deepspeed, trainer.is_deepspeed_enabled),
    }
    for engine, (asked, enabled) in requested.items():
        if asked and not enabled:
            raise LaunchError(
                f"{engine} was asked for, but the Trainer runs {trainer.accelerator.distributed_type.value} on "
                f"{trainer.args.device.type}: accelerate enables {engine} on accelerators (GPUs) only. On CPU, drop "
                "the FSDP config / --deepspeed (`accelerate launch --multi_gpu ... --use_cpu` trains with DDP)."
            )


def unsharded_model(trainer: Trainer) -> torch.nn.Module:
    """The model to save at the end of training; under FSDP, a plain copy holding the full weights.

    FSDP2 shards the model in place (its parameters become DTensors and its class a wrapper); saving or merging LoRA
    needs the whole weights. Every process joins the gathering; the main process gets the weights, the others an
    empty (meta) copy, as they save nothing. The copy replaces `trainer.model`, so `trainer.save_model()` and
    `trainer.push_to_hub()` then save it as any model, in one `model.safetensors` that loads with `AutoModel`. It is
    for saving only: its buffers that are not saved (rotary tables) stay unmaterialized.
    """
    if not trainer.is_fsdp_enabled:
        return trainer.model
    sharded = trainer.model
    state_dict = trainer.accelerator.get_state_dict(sharded)  # full weights on the main process, {} elsewhere
    with torch.device("meta"):
        plain = BlspForConditionalGeneration(sharded.config)
        if hasattr(sharded.language_model, "peft_config"):
            plain.language_model = get_peft_model(plain.language_model, sharded.language_model.peft_config["default"])
    if state_dict:
        plain.load_state_dict(state_dict, assign=True)
        plain.tie_weights()
    plain.generation_config = sharded.generation_config
    trainer.model = trainer.model_wrapped = plain
    trainer.is_fsdp_enabled = False
    return plain
