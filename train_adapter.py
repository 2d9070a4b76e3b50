#!/usr/bin/env python
"""Step 2 of BLSP: train the modality adapter so that the LLM, given speech, behaves as it does given the transcript.

Datasets come from `generate_continuations.py` (step 1): columns `audio`, `text` (transcript) and `continuation`.
Each row becomes the step-1 prompt with the speech in place of the transcript, followed by the continuation.
Objectives (`--loss`):
- `ce`: cross-entropy on the continuation and EOS (the BLSP paper);
- `kl`: KL divergence, with temperature, between the LLM's next-token distributions on the response positions given
  the speech (student) and given the transcript (teacher: the same LLM without adapter or LoRA, no gradient), as in
  BLSP-KD and Ultravox; the response is the continuation when the dataset has one, else the transcript itself, so
  no continuation is needed;
- `ce+kl`: `--ce_weight` * ce + `--kl_weight` * kl.

Only the adapter trains by default; `--train_speech_encoder` adds the Whisper encoder, `--lora_r` LoRA on the LLM.

Examples:

    python train_adapter.py --speech_encoder_name_or_path openai/whisper-small \
        --llm_name_or_path Qwen/Qwen2.5-7B-Instruct --dataset_name continuations/ \
        --output_dir blsp-qwen --loss ce --learning_rate 5e-5 --warmup_steps 1000 --bf16
    accelerate launch train_adapter.py args.yaml   # the same arguments from a .json or .yaml file
"""

import json
import logging
import math
import os
import sys
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial

import datasets
import torch
import transformers
from datasets import Audio, concatenate_datasets
from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import PreTrainedConfig, Trainer, TrainingArguments, set_seed
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

from data_blsp import (
    CorpusArguments,
    JsonlLog,
    audio_source,
    join_audio,
    load_source,
    parse_script_arguments,
    reject_record,
)
from engines_blsp import check_one_training, check_requested_engine, unsharded_model
from generate_continuations import HUB_METADATA_FILE
from model_card_blsp import LORA_ADAPTER_DIR, build_model_card
from modeling_blsp import BlspForConditionalGeneration
from processing_blsp import CONTINUATION_INSTRUCTION, IGNORE_INDEX, PROMPT_LAYOUTS, AudioInputError, BlspProcessor
from streaming_blsp import clip_seconds, stream_continuations, training_stream

logger = logging.getLogger(__name__)

LOSSES = ("ce", "kl", "ce+kl")
LORA_SAVE_MODES = ("merged", "adapter")
TEACHER_PREFIX = "teacher_"
SKIPPED_ROWS_KEY = "num_skipped_rows"
ROW_IDS_KEY = "row_ids"


@dataclass
class ModelArguments:
    """Which model to train, and which of its parts."""

    model_name_or_path: str | None = field(
        default=None, metadata={"help": "An existing BLSP checkpoint (local or Hub) to continue training."}
    )
    speech_encoder_name_or_path: str | None = field(
        default=None, metadata={"help": "A Whisper checkpoint for a new BLSP model (only its encoder is kept)."}
    )
    llm_name_or_path: str | None = field(
        default=None, metadata={"help": "A causal LM checkpoint for a new BLSP model."}
    )
    encoder_padding: str | None = field(
        default=None,
        metadata={
            "help": "'longest' (encoder runs on the batch's longest clip) or 'max_length' (30 s, as published). "
            "Default: 'longest' for a new model, the checkpoint's setting otherwise.",
            "choices": ["longest", "max_length"],
        },
    )
    dtype: str | None = field(
        default=None,
        metadata={
            "help": "Dtype of the loaded weights (default: each checkpoint's own); trainable parameters are kept "
            "in float32.",
            "choices": ["auto", "bfloat16", "float16", "float32"],
        },
    )
    train_speech_encoder: bool = field(default=False, metadata={"help": "Also train the Whisper encoder."})
    lora_r: int = field(default=0, metadata={"help": "Rank of LoRA on the LLM; 0 leaves the LLM frozen."})
    lora_alpha: int = field(default=16, metadata={"help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.05, metadata={"help": "Dropout on the LoRA inputs."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["all-linear"],
        metadata={"help": "LLM modules that get LoRA (peft names; 'all-linear' is every linear layer but the head)."},
    )
    lora_save: str = field(
        default="merged",
        metadata={
            "help": "How the final model keeps LoRA: 'merged' into the LLM weights (one checkpoint, loads with "
            f"AutoModel), or 'adapter': the base LLM weights plus a peft adapter in `{LORA_ADAPTER_DIR}/`.",
            "choices": list(LORA_SAVE_MODES),
        },
    )
    save_adapter_only: bool = field(
        default=False,
        metadata={
            "help": "Save (and push) only the trained weights, as Ultravox does: the config names the frozen bases "
            "(--speech_encoder_hub_id, --llm_hub_id), which from_pretrained loads. A 7B model's push is megabytes."
        },
    )
    speech_encoder_hub_id: str | None = field(
        default=None,
        metadata={"help": "The Whisper base an adapter-only checkpoint names (default: the one trained with)."},
    )
    llm_hub_id: str | None = field(
        default=None,
        metadata={"help": "The LLM base an adapter-only checkpoint names (default: the one trained with)."},
    )

    def __post_init__(self):
        if isinstance(self.lora_target_modules, str):  # a single name in a .json/.yaml file
            self.lora_target_modules = [self.lora_target_modules]
        new_model = self.speech_encoder_name_or_path is not None or self.llm_name_or_path is not None
        if (self.model_name_or_path is not None) == new_model:
            raise ValueError(
                "Give either --model_name_or_path (a BLSP checkpoint to continue) or both "
                "--speech_encoder_name_or_path and --llm_name_or_path (a new BLSP model)."
            )
        if new_model and (self.speech_encoder_name_or_path is None or self.llm_name_or_path is None):
            raise ValueError("A new BLSP model needs both --speech_encoder_name_or_path and --llm_name_or_path.")
        if self.save_adapter_only and (self.train_speech_encoder or (self.lora_r and self.lora_save == "merged")):
            raise ValueError(
                "--save_adapter_only keeps the bases as published: it cannot hold a trained speech encoder or LoRA "
                "merged into the LLM (use --lora_save adapter)."
            )


@dataclass
class DataArguments:
    """Which continuation datasets to train and evaluate on, and the prompt they were made with."""

    dataset_name: list[str] = field(
        metadata={
            "aliases": ["--dataset_name_or_path"],
            "help": "One or more datasets made by generate_continuations.py: output folders or Hub ids "
            "(--dataset_name_or_path is an alias).",
        }
    )
    dataset_split: str = field(default="train", metadata={"help": "Split to read from each training dataset."})
    eval_dataset_name: list[str] | None = field(
        default=None,
        metadata={
            "aliases": ["--eval_dataset_name_or_path"],
            "help": "Evaluation dataset(s), in the same format (--eval_dataset_name_or_path is an alias).",
        },
    )
    eval_dataset_split: str = field(default="train", metadata={"help": "Split to read from each evaluation dataset."})
    eval_split_ratio: float = field(
        default=0.0, metadata={"help": "Hold out this fraction of the training rows for evaluation instead."}
    )
    instruction: str | None = field(
        default=None,
        metadata={"help": "Prompt instruction; default: each dataset's recorded one, else the BLSP continuation one."},
    )
    prompt_layout: str | None = field(
        default=None,
        metadata={"help": "Prompt layout; default: the datasets' recorded one.", "choices": list(PROMPT_LAYOUTS)},
    )
    system_prompt: str | None = field(
        default=None, metadata={"help": "System prompt for chat LLMs; default: the datasets' recorded one."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Truncate the training set (debugging)."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Truncate the evaluation set."})
    preprocessing_num_workers: int | None = field(
        default=None, metadata={"help": "Processes for reading audio durations."}
    )
    streaming: bool = field(
        default=False,
        metadata={"help": "Stream the training rows and their audio (needs --max_steps); processes read their shards."},
    )
    dataset_weights: list[float] | None = field(
        default=None, metadata={"help": "With --streaming: how often each --dataset_name is drawn, e.g. 3 1."}
    )
    shuffle_buffer_size: int = field(default=1000, metadata={"help": "With --streaming: rows shuffled at a time."})
    duration_group_rows: int = field(
        default=256, metadata={"help": "With --streaming: rows of the buffer sorted by duration together."}
    )
    max_audio_seconds: float | None = field(
        default=None, metadata={"help": "With --streaming: leave out clips longer than this."}
    )
    duration_column_name: str = field(
        default="duration",
        metadata={
            "help": "The column holding each clip's duration in seconds, used when the dataset (or, with "
            "--streaming, its source corpus) has it; else durations are read from the clips' headers."
        },
    )
    log_trained_rows: bool = field(
        default=False,
        metadata={"help": "Append each step's (corpus, row_id) pairs to output_dir/trained_rows-<process>.jsonl."},
    )

    def __post_init__(self):
        if isinstance(self.dataset_name, str):  # a single name in a .json/.yaml file
            self.dataset_name = [self.dataset_name]
        if isinstance(self.eval_dataset_name, str):
            self.eval_dataset_name = [self.eval_dataset_name]
        if not 0.0 <= self.eval_split_ratio < 1.0:
            raise ValueError(f"--eval_split_ratio must be in [0, 1), got {self.eval_split_ratio}.")
        if self.eval_split_ratio and self.eval_dataset_name:
            raise ValueError("Give --eval_split_ratio or --eval_dataset_name, not both.")
        if self.dataset_weights and len(self.dataset_weights) != len(self.dataset_name):
            raise ValueError(f"--dataset_weights needs one weight per --dataset_name ({len(self.dataset_name)}).")
        if self.streaming and self.eval_split_ratio:
            raise ValueError("--streaming takes an --eval_dataset_name, not --eval_split_ratio.")


@dataclass
class BlspTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the objective; batches are grouped by audio duration by default."""

    loss: str = field(
        default="ce",
        metadata={"help": "Objective: 'ce' (continuation), 'kl' (distillation), 'ce+kl'.", "choices": list(LOSSES)},
    )
    kl_temperature: float = field(default=2.0, metadata={"help": "Softmax temperature of the KL objective."})
    ce_weight: float = field(default=1.0, metadata={"help": "Weight of the cross-entropy term."})
    kl_weight: float = field(default=1.0, metadata={"help": "Weight of the KL term."})
    train_sampling_strategy: str = field(
        default="group_by_length",
        metadata={
            "help": "Sampler: 'group_by_length' (default: batches of similar audio duration), 'random', ...",
            "choices": ["random", "sequential", "group_by_length", "batch_rebalance"],
        },
    )
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Must stay False: the collator decodes the raw audio column."}
    )
    prediction_loss_only: bool = field(default=True, metadata={"help": "Evaluation computes the loss only."})
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "Every trainable parameter is used at every step: no search needed."}
    )

    def __post_init__(self):
        super().__post_init__()
        if self.remove_unused_columns:
            raise ValueError("train_adapter.py decodes audio in its collator: --remove_unused_columns must be False.")

    @property
    def loss_terms(self) -> set[str]:
        """The terms of the objective: a subset of {"ce", "kl"}."""
        return set(self.loss.split("+"))


# ----------------------------------------------------------------------------------------------------- data


def required_columns(loss_terms: set[str]) -> list[str]:
    """Columns the objective needs: the continuation only for cross-entropy."""
    return ["audio", "text", "continuation"] if "ce" in loss_terms else ["audio", "text"]


def check_columns(dataset: datasets.Dataset, name: str, loss_terms: set[str]):
    """Fail with a clear message when a dataset lacks the columns of the objective."""
    missing = [column for column in required_columns(loss_terms) if column not in dataset.column_names]
    if missing:
        raise ValueError(
            f"Dataset {name!r} has columns {dataset.column_names} but lacks {missing}: train_adapter.py needs "
            f"{required_columns(loss_terms)} for --loss {'+'.join(sorted(loss_terms))} (datasets made by "
            "generate_continuations.py have them; --loss kl needs no continuation)."
        )


def prompt_metadata(dataset: datasets.Dataset | None, name_or_path: str) -> dict:
    """The settings generate_continuations.py recorded (prompt, source corpus): `blsp_continuations.json` in the
    output folder or the Hub repository, or the description of an older `save_to_disk` output."""
    try:
        local_file = os.path.join(name_or_path, HUB_METADATA_FILE)
        if os.path.isfile(local_file):
            with open(local_file, encoding="utf-8") as file:
                metadata = json.load(file)
        elif os.path.exists(name_or_path):
            metadata = json.loads(dataset.info.description or "{}") if dataset is not None else {}
        else:
            with open(hf_hub_download(name_or_path, HUB_METADATA_FILE, repo_type="dataset")) as file:
                metadata = json.load(file)
    except (json.JSONDecodeError, EntryNotFoundError):
        return {}
    return metadata if isinstance(metadata, dict) else {}


def agreed_setting(name: str, override, metadatas: list[dict], default):
    """The command-line value, else the one value the datasets recorded, else `default`; datasets must agree."""
    if override is not None:
        return override
    recorded = {metadata[name] for metadata in metadatas if metadata.get(name) is not None}
    if len(recorded) > 1:
        raise ValueError(f"The datasets were made with different {name} values {sorted(recorded)}: give --{name}.")
    return recorded.pop() if recorded else default


def dataset_instruction(data_args: DataArguments, metadata: dict) -> str:
    """The command-line instruction, else the dataset's recorded one, else BLSP's continuation instruction."""
    return data_args.instruction or metadata.get("instruction") or CONTINUATION_INSTRUCTION


def audio_duration_ms(audio: dict) -> dict:
    """Duration of a `{"path", "bytes"}` audio cell from its header (no decoding); 0 when unreadable (the collator
    skips and counts the row)."""
    return {"length": int(1000 * clip_seconds(audio))}


def prepare_dataset(
    names: list[str], split: str, data_args: DataArguments, loss_terms: set[str], length_column: str
) -> tuple[datasets.Dataset, list[dict]]:
    """Open, check and concatenate datasets; add an `instruction` column and audio durations for length grouping.

    Returns the dataset and each source's prompt metadata.
    """
    parts, metadatas = [], []
    for name in names:
        dataset = load_source(CorpusArguments(dataset_name=name, split=split))
        metadata = prompt_metadata(dataset, name)
        if "audio" not in dataset.column_names and "source" in metadata:  # step 1 kept no copy of the audio
            dataset = join_audio(dataset, metadata["source"])
        check_columns(dataset, name, loss_terms)
        instruction = dataset_instruction(data_args, metadata)
        wanted = ("audio", "text", "continuation", data_args.duration_column_name)
        keep = [column for column in wanted if column in dataset.column_names]
        dataset = dataset.select_columns(keep).cast_column("audio", Audio(decode=False))
        parts.append(dataset.add_column("instruction", [instruction] * len(dataset)))
        metadatas.append(metadata)
    duration = data_args.duration_column_name
    if not all(duration in part.column_names for part in parts):  # durations from the headers for every row then
        parts = [part.remove_columns([duration]) if duration in part.column_names else part for part in parts]
    dataset = concatenate_datasets(parts)
    if "continuation" in dataset.column_names:
        before = len(dataset)
        dataset = dataset.filter(bool, input_columns=["continuation"])
        if len(dataset) < before:
            logger.warning("Dropped %d rows without a continuation.", before - len(dataset))
    if duration in dataset.column_names:
        dataset = dataset.map(
            lambda seconds: {"length": [int(1000 * value) for value in seconds]},
            input_columns=[duration],
            batched=True,
            desc="Durations from the duration column",
        )
    else:
        dataset = dataset.map(
            audio_duration_ms,
            input_columns=["audio"],
            num_proc=data_args.preprocessing_num_workers,
            desc="Reading audio durations",
        )
    if length_column != "length":
        dataset = dataset.rename_column("length", length_column)
    return dataset, metadatas


def truncate(dataset: datasets.Dataset | None, max_samples: int | None) -> datasets.Dataset | None:
    if dataset is None or max_samples is None:
        return dataset
    return dataset.select(range(min(max_samples, len(dataset))))


@dataclass
class SpeechPromptCollator:
    """Decodes each row's audio (soundfile + soxr) and builds the model inputs.

    Student: the prompt with the speech in place of the transcript, then the response (continuation, else transcript)
    and EOS as labels. Teacher (KL only, keys prefixed `teacher_`): the same prompt with the transcript, same response.
    Rows whose audio cannot be decoded are skipped, logged and counted under `num_skipped_rows`.
    """

    processor: BlspProcessor
    with_teacher: bool
    rejects_path: str | None = None

    def readable_rows(self, rows: list[dict]) -> tuple[list[dict], list]:
        """The rows whose audio decodes to a usable clip, and those clips."""
        kept, clips = [], []
        min_samples = self.processor.feature_extractor.hop_length
        for row in rows:
            try:
                clip = self.processor.load_audio(row["audio"])
                if len(clip) < min_samples:
                    raise AudioInputError(f"Bad audio {row['audio'].get('path')!r}: only {len(clip)} samples.")
            except AudioInputError as error:
                logger.warning("Skipping a row: %s", error)
                self.record_reject(row, error)
                continue
            kept.append(row)
            clips.append(clip)
        return kept, clips

    def record_reject(self, row: dict, error: AudioInputError):
        """Append the skipped row (row id when streamed, audio source, reason) to `rejects_path`, if set."""
        if self.rejects_path is not None:
            record = reject_record(row.get("row_id", -1), audio_source(row["audio"]), ("unusable_audio", str(error)))
            with open(self.rejects_path, "a", encoding="utf-8") as file:  # rare: one short line, opened each time
                file.write(json.dumps(record) + "\n")

    def __call__(self, rows: list[dict]) -> dict:
        kept, clips = self.readable_rows(rows)
        batch = {SKIPPED_ROWS_KEY: torch.tensor(len(rows) - len(kept))}
        if not kept:
            return batch
        if "row_id" in kept[0]:  # streamed rows: (corpus, row id) of each, for --log_trained_rows
            batch[ROW_IDS_KEY] = torch.tensor([[row["corpus"], row["row_id"]] for row in kept])
        responses = [row.get("continuation") or row["text"] for row in kept]
        student = self.processor(
            text=[self.processor.render_prompt(row["instruction"]) for row in kept],
            audio=clips,
            text_target=responses,
        )
        batch.update(student)
        if self.with_teacher:
            teacher = self.processor(
                text=[self.processor.render_prompt(row["instruction"], row["text"]) for row in kept],
                text_target=responses,
            )
            batch.update({TEACHER_PREFIX + key: value for key, value in teacher.items()})
        return batch


# ----------------------------------------------------------------------------------------------------- model


def check_model_type(name_or_path: str, expected: str, hint: str):
    """Fail with a clear message when a checkpoint is not of the `expected` model type."""
    config_dict, _ = PreTrainedConfig.get_config_dict(name_or_path)
    model_type = config_dict.get("model_type")
    if model_type != expected:
        raise ValueError(f"{name_or_path!r} is a {model_type!r} checkpoint, not a {expected!r} one. {hint}")


def load_model_and_processor(model_args: ModelArguments, prompt_layout, system_prompt):
    """A new BLSP model (Whisper + LLM, new adapter) or an existing checkpoint, with its processor."""
    if model_args.model_name_or_path is not None:
        path = model_args.model_name_or_path
        check_model_type(
            path, "blsp", "Pass --speech_encoder_name_or_path and --llm_name_or_path to build a new BLSP model."
        )
        model = BlspForConditionalGeneration.from_pretrained(path, dtype=model_args.dtype)
        # The checkpoint's processor config names this repository's own class: no remote code runs.
        processor = BlspProcessor.from_pretrained(path, trust_remote_code=True)
        if model_args.encoder_padding is not None:
            model.config.encoder_padding = model_args.encoder_padding
    else:
        speech, text = model_args.speech_encoder_name_or_path, model_args.llm_name_or_path
        check_model_type(speech, "whisper", "--speech_encoder_name_or_path must be a Whisper checkpoint.")
        model = BlspForConditionalGeneration.from_speech_text_pretrained(
            speech, text, dtype=model_args.dtype, encoder_padding=model_args.encoder_padding or "longest"
        )
        processor = BlspProcessor.from_speech_text_pretrained(speech, text, config=model.config)
    processor.prompt_layout = prompt_layout or processor.prompt_layout
    processor.system_prompt = system_prompt if system_prompt is not None else processor.system_prompt
    return model, processor


def adapter_only_bases(model_args: ModelArguments, config) -> tuple[str, str]:
    """The (Whisper, LLM) names an adapter-only checkpoint records: the --*_hub_id flags, else the bases used."""
    speech = model_args.speech_encoder_hub_id or model_args.speech_encoder_name_or_path
    text = model_args.llm_hub_id or model_args.llm_name_or_path
    speech, text = speech or config.speech_model_name_or_path, text or config.text_model_name_or_path
    if not (speech and text):
        raise ValueError(
            f"{model_args.model_name_or_path!r} does not name its bases: give --speech_encoder_hub_id "
            "and --llm_hub_id for --save_adapter_only."
        )
    return speech, text


def select_trainable_parameters(model: BlspForConditionalGeneration, train_speech_encoder: bool):
    """Freeze everything but the adapter (and the encoder when asked; its positional table stays frozen)."""
    model.requires_grad_(False)
    model.adapter.requires_grad_(True)
    if train_speech_encoder:
        model.speech_encoder.requires_grad_(True)
        model.speech_encoder.embed_positions.requires_grad_(False)


def add_lora(model: BlspForConditionalGeneration, model_args: ModelArguments):
    """Wrap the LLM in a peft LoRA model; the teacher of the KL objective runs with LoRA disabled."""
    config = LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=model_args.lora_target_modules[0]
        if model_args.lora_target_modules == ["all-linear"]
        else model_args.lora_target_modules,
        task_type="CAUSAL_LM",
    )
    model.language_model = get_peft_model(model.language_model, config)


def keep_trainable_in_float32(model: nn.Module):
    """Trainable parameters in float32 (the master weights of mixed precision); frozen ones keep their dtype."""
    for parameter in model.parameters():
        if parameter.requires_grad:
            parameter.data = parameter.data.float()


def uses_lora(model: BlspForConditionalGeneration) -> bool:
    return hasattr(model.language_model, "peft_config")


def finalize_lora(model: BlspForConditionalGeneration, mode: str, output_dir: str, is_main_process: bool = True):
    """Turn the peft-wrapped LLM back into a plain one: LoRA merged in, or saved aside (by the main process) and
    removed."""
    if mode == "adapter":
        path = os.path.join(output_dir, LORA_ADAPTER_DIR)
        model.language_model.save_pretrained(path, is_main_process=is_main_process)
        model.language_model = model.language_model.unload()
    else:
        model.language_model = model.language_model.merge_and_unload()


# ----------------------------------------------------------------------------------------------------- loss


def response_window(labels: torch.Tensor) -> int:
    """Trailing positions whose logits predict response tokens (left padding puts every response last), plus one."""
    first_learned = int((labels != IGNORE_INDEX).any(0).nonzero()[0])
    return labels.shape[1] - first_learned + 1


def response_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(tokens, vocab) logits at the positions predicting each response token, in reading order."""
    return logits[:, :-1][labels[:, 1:] != IGNORE_INDEX]


def kl_divergence_sum(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Sum over positions of KL(teacher || student) of the temperature-softened distributions, times T^2."""
    student = nn.functional.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = nn.functional.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return nn.functional.kl_div(student, teacher, log_target=True, reduction="sum") * temperature**2


class EpochSeededLengthGroupedSampler(LengthGroupedSampler):
    """Batches of similar length in an order drawn from (seed, epoch) alone.

    The stock sampler draws from the global RNG, so a run resumed mid-epoch would replay another order.
    """

    def __init__(self, batch_size: int, lengths: list[int], seed: int):
        super().__init__(batch_size, lengths=lengths)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int):
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


class BlspTrainer(Trainer):
    """A `Trainer` with the BLSP objectives, logits only on response positions, and skipped-row counting."""

    def __init__(self, *args, model_card_builder=None, trained_rows_log: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.model_card_builder = model_card_builder
        self.skipped_audio_rows = 0
        self.trained_rows = JsonlLog(trained_rows_log) if trained_rows_log else None
        # The loss is normalized by `num_items_in_batch` (the whole accumulated batch's response tokens).
        self.loss_is_scaled_for_ga = True

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        if (
            self.args.train_sampling_strategy != "group_by_length"
            or self.args.length_column_name not in dataset.column_names
        ):
            return super()._get_train_sampler(train_dataset)
        return EpochSeededLengthGroupedSampler(
            self.args.train_batch_size * self.args.gradient_accumulation_steps,
            lengths=list(dataset[self.args.length_column_name]),
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
        )

    def model_outputs(self, model, inputs: dict, labels: torch.Tensor, num_items_in_batch=None):
        """Forward with labels, computing logits only on the trailing window that holds the response positions."""
        window = response_window(labels)
        loss_kwargs = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
        return model(**inputs, labels=labels[:, -window:], logits_to_keep=window, **loss_kwargs), labels[:, -window:]

    def teacher_logits(self, model, teacher_inputs: dict) -> torch.Tensor:
        """The frozen LLM (no adapter: the prompt holds no speech; LoRA disabled) on the transcript prompt."""
        labels = teacher_inputs.pop("labels")
        blsp = self.accelerator.unwrap_model(model)
        lora_off = blsp.language_model.disable_adapter() if uses_lora(blsp) else nullcontext()
        with torch.no_grad(), lora_off:
            outputs, labels = self.model_outputs(model, teacher_inputs, labels)
        return response_logits(outputs.logits, labels)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        self.skipped_audio_rows += int(inputs.pop(SKIPPED_ROWS_KEY, 0))
        row_ids = inputs.pop(ROW_IDS_KEY, None)
        if self.trained_rows is not None and row_ids is not None and model.training:
            self.trained_rows.append([{"step": self.state.global_step + 1, "rows": row_ids.tolist()}])
        if "input_ids" not in inputs:  # every row of the batch was unreadable
            loss = sum(parameter.sum() for parameter in model.parameters() if parameter.requires_grad) * 0.0
            return (loss, None) if return_outputs else loss
        teacher_inputs = {
            key[len(TEACHER_PREFIX) :]: inputs.pop(key) for key in list(inputs) if key.startswith(TEACHER_PREFIX)
        }
        terms = self.args.loss_terms
        teacher = self.teacher_logits(model, teacher_inputs) if "kl" in terms else None
        outputs, labels = self.model_outputs(model, inputs, inputs.pop("labels"), num_items_in_batch)
        loss = self.args.ce_weight * outputs.loss if "ce" in terms else 0.0
        if "kl" in terms:
            student = response_logits(outputs.logits, labels)
            tokens = num_items_in_batch if num_items_in_batch is not None else student.shape[0]
            loss = loss + self.args.kl_weight * kl_divergence_sum(student, teacher, self.args.kl_temperature) / tokens
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # the token count was summed over processes
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs.pop(ROW_IDS_KEY, None)
        if "input_ids" not in inputs:  # every row of the batch was unreadable
            self.skipped_audio_rows += int(inputs[SKIPPED_ROWS_KEY])
            return None, None, None
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)

    def log(self, logs: dict[str, float], start_time: float | None = None):
        if self.skipped_audio_rows:
            logs["skipped_audio_rows"] = self.skipped_audio_rows
        super().log(logs, start_time)

    def create_model_card(self, **kwargs):
        """Write BLSP's own model card (Trainer.push_to_hub calls this before uploading)."""
        if self.is_world_process_zero() and self.model_card_builder is not None:
            self.model_card_builder(self).save(os.path.join(self.args.output_dir, "README.md"))


# ----------------------------------------------------------------------------------------------------- main


def parse_arguments(args: list[str] | None = None) -> tuple[ModelArguments, DataArguments, BlspTrainingArguments]:
    """Command-line flags, or one .json/.yaml file holding them."""
    return parse_script_arguments((ModelArguments, DataArguments, BlspTrainingArguments), args)


def setup_logging(training_args: TrainingArguments):
    logging.basicConfig(
        format="%(asctime)s - %(levelname)s - %(name)s - %(message)s",
        datefmt="%m/%d/%Y %H:%M:%S",
        handlers=[logging.StreamHandler(sys.stdout)],
    )
    log_level = training_args.get_process_log_level()
    logger.setLevel(log_level)
    datasets.utils.logging.set_verbosity(log_level)
    transformers.utils.logging.set_verbosity(log_level)


def stream_datasets(data_args: DataArguments, training_args: BlspTrainingArguments):
    """The training rows as one stream (see streaming_blsp) and the datasets' prompt metadata."""
    streams, metadatas = [], []
    for index, name in enumerate(data_args.dataset_name):
        metadata = prompt_metadata(None, name)
        instruction = dataset_instruction(data_args, metadata)
        streams.append(
            stream_continuations(
                name, data_args.dataset_split, index, instruction, metadata, data_args.duration_column_name
            )
        )
        metadatas.append(metadata)
    stream = training_stream(
        streams,
        data_args.dataset_weights,
        training_args.data_seed if training_args.data_seed is not None else training_args.seed,
        data_args.shuffle_buffer_size,
        data_args.duration_group_rows,
        data_args.max_audio_seconds,
    )
    return stream, metadatas


def load_datasets(data_args: DataArguments, training_args: BlspTrainingArguments):
    """Training and evaluation sets (the latter may be None) and the training sets' prompt metadata."""
    if data_args.streaming:
        train_dataset, metadatas = stream_datasets(data_args, training_args)
        eval_dataset = None
        if data_args.eval_dataset_name:
            eval_dataset, _ = prepare_dataset(
                data_args.eval_dataset_name,
                data_args.eval_dataset_split,
                data_args,
                training_args.loss_terms,
                training_args.length_column_name,
            )
        return train_dataset, truncate(eval_dataset, data_args.max_eval_samples), metadatas
    prepare = partial(
        prepare_dataset,
        data_args=data_args,
        loss_terms=training_args.loss_terms,
        length_column=training_args.length_column_name,
    )
    train_dataset, metadatas = prepare(data_args.dataset_name, data_args.dataset_split)
    eval_dataset = None
    if data_args.eval_dataset_name:
        eval_dataset, _ = prepare(data_args.eval_dataset_name, data_args.eval_dataset_split)
    elif data_args.eval_split_ratio:
        split = train_dataset.train_test_split(test_size=data_args.eval_split_ratio, seed=training_args.seed)
        train_dataset, eval_dataset = split["train"], split["test"]
    train_dataset = truncate(train_dataset, data_args.max_train_samples)
    return train_dataset, truncate(eval_dataset, data_args.max_eval_samples), metadatas


def audio_rejects_path(training_args: TrainingArguments) -> str:
    """This process's record of the rows skipped for unusable audio (created on the first one)."""
    os.makedirs(training_args.output_dir, exist_ok=True)
    return os.path.join(training_args.output_dir, f"audio_rejects-{training_args.process_index:05d}.jsonl")


def trained_rows_path(training_args: TrainingArguments) -> str:
    """This process's log of trained (corpus, row_id) pairs, one line per micro-batch with its optimizer step."""
    return os.path.join(training_args.output_dir, f"trained_rows-{training_args.process_index:05d}.jsonl")


def main(args: list[str] | None = None):
    model_args, data_args, training_args = parse_arguments(args)
    check_one_training(training_args)
    setup_logging(training_args)

    with training_args.main_process_first(desc="preparing datasets"):
        train_dataset, eval_dataset, metadatas = load_datasets(data_args, training_args)
    instructions = sorted({dataset_instruction(data_args, metadata) for metadata in metadatas})
    prompt_layout = agreed_setting("prompt_layout", data_args.prompt_layout, metadatas, None)
    system_prompt = agreed_setting("system_prompt", data_args.system_prompt, metadatas, None)

    if data_args.streaming:  # each process reads its own shards of the stream (no dispatching from process 0)
        training_args.accelerator_config.dispatch_batches = False
    set_seed(training_args.seed)
    model, processor = load_model_and_processor(model_args, prompt_layout, system_prompt)
    bases = adapter_only_bases(model_args, model.config) if model_args.save_adapter_only else None
    select_trainable_parameters(model, model_args.train_speech_encoder)
    if model_args.lora_r:
        add_lora(model, model_args)
    keep_trainable_in_float32(model)
    trainable = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    logger.info("Trainable parameters: %d of %d.", trainable, sum(p.numel() for p in model.parameters()))

    trainer = BlspTrainer(
        model=model,
        args=training_args,
        data_collator=SpeechPromptCollator(
            processor, with_teacher="kl" in training_args.loss_terms, rejects_path=audio_rejects_path(training_args)
        ),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        model_card_builder=partial(build_model_card, model_args, data_args, instructions, trainable),
        trained_rows_log=trained_rows_path(training_args) if data_args.log_trained_rows else None,
    )
    check_requested_engine(trainer)
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = train_result.metrics
    skipped = torch.tensor(trainer.skipped_audio_rows, device=training_args.device)
    metrics["skipped_audio_rows"] = int(trainer.accelerator.reduce(skipped, reduction="sum"))
    if metrics["skipped_audio_rows"] and trainer.is_world_process_zero():
        logger.warning("Skipped %d rows whose audio could not be decoded.", metrics["skipped_audio_rows"])
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    if eval_dataset is not None:
        eval_metrics = trainer.evaluate()
        eval_metrics["eval_perplexity"] = math.exp(min(eval_metrics["eval_loss"], 100.0))
        trainer.log_metrics("eval", eval_metrics)
        trainer.save_metrics("eval", eval_metrics)

    model = unsharded_model(trainer)
    if uses_lora(model):
        finalize_lora(model, model_args.lora_save, training_args.output_dir, training_args.should_save)
    if bases is not None:
        model.config.adapter_only = True
        model.config.speech_model_name_or_path, model.config.text_model_name_or_path = bases
    trainer.save_model()
    if training_args.push_to_hub:
        trainer.push_to_hub(commit_message="End of training")
    else:
        trainer.create_model_card()


if __name__ == "__main__":
    main()
