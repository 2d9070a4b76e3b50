"""The model card `train_adapter.py` writes (and `Trainer.push_to_hub` uploads): base models, data, objective,
hyper-parameters, eval loss and usage, with Hub metadata."""

import os
import re

from huggingface_hub import ModelCard, ModelCardData
from transformers import Trainer

from .objectives import objective_description, objective_settings
from .training import LORA_ADAPTER_DIR

HUB_ID_PATTERN = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


def hub_ids(names: list[str]) -> list[str]:
    """The names that are Hub repository ids (local paths stay out of the card's metadata)."""
    return [name for name in names if not os.path.exists(name) and HUB_ID_PATTERN.match(name)]


def base_model_ids(model_args, config) -> list[str]:
    """The Hub ids the model is built on: the BLSP checkpoint it continues, else its speech encoder and LLM as its
    config names them (also when it continues a local folder; older configs name them in the sub-configs only)."""
    if model_args.model_name_or_path and hub_ids([model_args.model_name_or_path]) and not config.adapter_only:
        return [model_args.model_name_or_path]
    speech = config.speech_model_name_or_path or config.speech_config._name_or_path
    text = config.text_model_name_or_path or config.text_config._name_or_path
    return hub_ids([speech, text])


def hyperparameters(trainer: Trainer, model_args, trainable_parameters: int, teacher: str | None = None) -> dict:
    """The card's table; `teacher`: the KL objective's teacher (`objectives.teacher_description`)."""
    args = trainer.args
    values = {
        "loss": args.loss,
        "learning_rate": args.learning_rate,
        "lr_scheduler_type": getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type),
        "warmup_steps": args.warmup_steps,
        "weight_decay": args.weight_decay,
        "max_grad_norm": args.max_grad_norm,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "total_train_batch_size": args.train_batch_size * args.gradient_accumulation_steps * args.world_size,
        "optimizer_steps": trainer.state.global_step,
        "epochs": round(trainer.state.epoch or 0.0, 3),
        "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "encoder_padding": trainer.model.config.encoder_padding,
        "train_sampling_strategy": args.train_sampling_strategy,
        "seed": args.seed,
        "trainable_parameters": trainable_parameters,
        "train_speech_encoder": model_args.train_speech_encoder,
        "train_speech_encoder_top_layers": model_args.train_speech_encoder_top_layers,
    }
    values.update(objective_settings(args))
    if teacher is not None:
        values["teacher"] = teacher
    if model_args.lora_r:
        values.update(
            lora_r=model_args.lora_r,
            lora_alpha=model_args.lora_alpha,
            lora_dropout=model_args.lora_dropout,
            lora_target_modules=", ".join(model_args.lora_target_modules),
            lora_save=model_args.lora_save,
        )
    return values


def usage_snippet(repo: str, instruction: str, lora_adapter: bool) -> str:
    """Loading and generating; with LoRA kept as an adapter, applying it (a pipeline would load the model without)."""
    load_lora = f'model.language_model.load_adapter("{repo}", adapter_kwargs={{"subfolder": "{LORA_ADAPTER_DIR}"}})\n'
    as_pipeline = (
        "\n# or, as a pipeline\n"
        f'speech_llm = pipeline(model="{repo}", trust_remote_code=True)\n'
        'print(speech_llm("speech.flac", instruction="Please transcribe the following audio."))\n'
    )
    return (
        "```python\n"
        f"from transformers import AutoModel, AutoProcessor{'' if lora_adapter else ', pipeline'}\n\n"
        f'model = AutoModel.from_pretrained("{repo}", trust_remote_code=True)\n'
        + (load_lora if lora_adapter else "")
        + f'processor = AutoProcessor.from_pretrained("{repo}", trust_remote_code=True)\n'
        f'inputs = processor(text=processor.render_prompt({instruction!r}), audio="speech.flac")\n'
        "generated = model.generate(**inputs, max_new_tokens=128)\n"
        'print(processor.batch_decode(generated[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True))\n'
        + ("" if lora_adapter else as_pipeline)
        + "```\n"
    )


def build_model_card(
    model_args,
    data_args,
    instructions: list[str],
    trainable_parameters: int,
    trainer: Trainer,
    teacher: str | None = None,
) -> ModelCard:
    """Base models, data, objective, hyper-parameters (with the KL objective's `teacher`), eval loss and usage, with
    Hub metadata."""
    args = trainer.args
    repo = args.hub_model_id or os.path.basename(os.path.abspath(args.output_dir))
    if model_args.model_name_or_path:
        base_text = f"- continued from the BLSP checkpoint `{model_args.model_name_or_path}`\n"
    else:
        base_text = (
            f"- speech encoder: `{model_args.speech_encoder_name_or_path}` (Whisper encoder)\n"
            f"- language model: `{model_args.llm_name_or_path}`\n"
        )
    datasets_used = data_args.dataset_name + (data_args.eval_dataset_name or [])
    eval_losses = [entry["eval_loss"] for entry in trainer.state.log_history if "eval_loss" in entry]
    objective = objective_description(args)
    table = "\n".join(
        f"| {name} | {value} |"
        for name, value in hyperparameters(trainer, model_args, trainable_parameters, teacher).items()
    )
    processor = trainer.processing_class
    config = trainer.model.config
    card_data = ModelCardData(
        pipeline_tag="audio-text-to-text",
        library_name="transformers",
        base_model=base_model_ids(model_args, config) or None,
        base_model_relation="adapter" if config.adapter_only else None,  # its weights apply to the bases named
        datasets=hub_ids(datasets_used) or None,
        tags=["blsp", "speech", "audio-text-to-text"],
    )
    body = (
        f"# {repo}\n\n"
        "A [BLSP](https://arxiv.org/abs/2309.00916) speech-language model: a Whisper encoder and an LLM joined by a "
        "modality adapter, trained with `train_adapter.py` so that the LLM, given speech, continues it as it "
        "continues the transcript.\n\n"
        f"## Base models\n{base_text}\n"
        "## Training data\n"
        + "".join(f"- `{name}`\n" for name in data_args.dataset_name)
        + f"\n{trainer.trained_rows_count} training rows (rows seen more than once count each time)"
        + "; instruction(s) "
        + ", ".join(f"`{instruction}`" for instruction in instructions)
        + f"; prompt layout `{processor.prompt_layout}`"
        + (f", system prompt `{processor.system_prompt}`" if processor.system_prompt else "")
        + ".\n\n"
        f"## Objective\n{objective}.\n\n"
        f"## Hyper-parameters\n| name | value |\n|---|---|\n{table}\n\n"
        "## Evaluation\n"
        + (f"eval loss: {eval_losses[-1]:.4f}\n\n" if eval_losses else "No evaluation set was given.\n\n")
        + "## Usage\n"
        + usage_snippet(repo, instructions[0], bool(model_args.lora_r) and model_args.lora_save == "adapter")
    )
    return ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}")
