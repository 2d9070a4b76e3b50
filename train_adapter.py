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
- `ctc`: CTC between the adapter's outputs, read through the LLM's token embeddings, and the transcript's tokens;
  no LLM forward, so a step costs a small fraction of the others: a warm-up that aligns the speech with the LLM's
  embedding space before `ce` or `kl` (not in the BLSP paper; see docs/steps.md);
- `chars`: CTC between an auxiliary character head on the adapter (`--adapter_characters`) and the transcript's
  characters, beside `ctc` (`--loss ctc+chars`);
- sums such as `ce+kl`: `--ce_weight` * ce + `--kl_weight` * kl (+ `--ctc_weight` * ctc, `--chars_weight` * chars).

Only the adapter trains by default; `--train_speech_encoder` adds the Whisper encoder, `--lora_r` LoRA on the LLM.
This script holds the arguments and `main`; in `blsp_steps/`: the datasets' preparation (`training_data.py`), the
objectives (`objectives.py`), the collator, sampler, trainer and model set-up (`training.py`), the model card
(`model_card.py`).

Examples:

    python train_adapter.py --speech_encoder_name_or_path openai/whisper-small \
        --llm_name_or_path Qwen/Qwen2.5-7B-Instruct --dataset_name continuations/ \
        --output_dir blsp-qwen --loss ce --learning_rate 5e-5 --warmup_steps 1000 --bf16
    accelerate launch train_adapter.py configs/train_adapter.yaml   # the arguments from a .json or .yaml file
"""

import logging
import math
import sys
from dataclasses import dataclass, field
from functools import partial

import datasets
import torch
import transformers
from transformers import TrainingArguments, set_seed

from blsp_steps.arguments import dtype_field, parse_script_arguments
from blsp_steps.augmentation import AugmentationArguments, SpeechAugmentation
from blsp_steps.corpora import TEACHER_IDS, agreed_setting
from blsp_steps.encoder_states import EncoderStateCache, encoder_fingerprint
from blsp_steps.engines import check_one_training, check_requested_engine, unsharded_model
from blsp_steps.identity import RecordModels, check_resumed_models
from blsp_steps.model_card import build_model_card
from blsp_steps.objectives import (
    LOSSES,
    TEACHER_SOURCES,
    cached_teacher_problem,
    needs_teacher,
    teacher_description,
    use_cached_teacher,
)
from blsp_steps.training import (
    LORA_ADAPTER_DIR,
    LORA_SAVE_MODES,
    BlspTrainer,
    SpeechPromptCollator,
    adapter_only_bases,
    add_lora,
    audio_rejects_path,
    check_usable_rows,
    checkpoint_to_resume,
    finalize_lora,
    keep_trainable_in_float32,
    load_model_and_processor,
    select_trainable_parameters,
    trained_rows_path,
    uses_lora,
)
from blsp_steps.training_data import dataset_instruction, load_datasets
from processing_blsp import PROMPT_LAYOUTS

logger = logging.getLogger(__name__)
MODEL_FLAGS = ("model_name_or_path", "speech_encoder_name_or_path", "llm_name_or_path")


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
    speech_compression: str | None = field(
        default=None,
        metadata={
            "help": "'ctc': the LLM reads the adapter's frames through its token embeddings, blank and repeated frames "
            "left out (BlspConfig.speech_compression); for an adapter warmed up with --loss ctc. Default: the "
            "checkpoint's setting (none for a new model).",
            "choices": ["ctc"],
        },
    )
    adapter_conv_stride: list[int] | None = field(
        default=None,
        metadata={
            "help": "Strides of the adapter's convolutions, one per layer (BlspConfig.adapter_conv_stride), also to "
            "change a trained adapter's (stride 1 instead of 2 doubles a layer's output rate; its weights keep "
            "their meaning). Default: the checkpoint's (2 each for a new model)."
        },
    )
    adapter_num_transformer_layers: int | None = field(
        default=None,
        metadata={
            "help": "Self-attention layers in the adapter (BlspConfig.adapter_num_transformer_layers); layers added "
            "to a trained adapter start as the identity. Default: the checkpoint's (none for a new model)."
        },
    )
    adapter_characters: str | None = field(
        default=None,
        metadata={
            "help": "The characters of an auxiliary CTC head on the adapter (BlspConfig.adapter_characters), which the "
            '`chars` objective trains, e.g. " abcdefghijklmnopqrstuvwxyz\'" (a new head on a trained adapter starts '
            "untrained). Default: the checkpoint's (none for a new model)."
        },
    )
    audio_padding_seconds: float | None = field(
        default=None,
        metadata={
            "help": "Silence the processor adds before and after every clip (BlspProcessor.audio_padding_seconds), in "
            "training and in the saved processor; 0 to 1. Default: the checkpoint's (none for a new model)."
        },
    )
    dtype: str = dtype_field(" Trainable parameters are kept in float32.")
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Run code the checkpoints ship (e.g. a tokenizer class file in their folder). Off by default: "
            "BLSP checkpoints load without it."
        },
    )
    train_speech_encoder: bool = field(default=False, metadata={"help": "Also train the Whisper encoder."})
    train_speech_encoder_top_layers: int = field(
        default=0,
        metadata={
            "help": "Also train the Whisper encoder's top N layers and its final layer norm (the layers below stay "
            "frozen). 0: none; --train_speech_encoder trains them all."
        },
    )
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

    match_embedding_scale: bool = field(
        default=False,
        metadata={
            "help": "Before training, scale the adapter's output LayerNorm so that speech embeddings have the norm "
            "of the LLM's token embeddings (see BlspForConditionalGeneration.match_speech_scale_to_embeddings)."
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
        if self.train_speech_encoder and self.train_speech_encoder_top_layers:
            raise ValueError("--train_speech_encoder trains all encoder layers: drop --train_speech_encoder_top_layers")
        trains_encoder = self.train_speech_encoder or self.train_speech_encoder_top_layers > 0
        if self.save_adapter_only and (trains_encoder or (self.lora_r and self.lora_save == "merged")):
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
    split: str = field(
        default="train",
        metadata={
            "aliases": ["--dataset_split"],
            "help": "Split to read from each training dataset (alias --dataset_split).",
        },
    )
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
    max_samples: int | None = field(
        default=None,
        metadata={
            "aliases": ["--max_train_samples"],
            "help": "Truncate the training set (debugging; alias --max_train_samples).",
        },
    )
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
    length_grouping_rows: int = field(
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
        metadata={
            "help": "Objective: 'ce' (continuation), 'kl' (distillation), 'ctc' (alignment warm-up), 'chars' (the "
            "adapter's character head), or a sum such as 'ce+kl'.",
            "choices": list(LOSSES),
        },
    )
    kl_temperature: float = field(default=2.0, metadata={"help": "Softmax temperature of the KL objective."})
    teacher: str = field(
        default="auto",
        metadata={
            "help": "The KL objective's teacher: 'live' (the LLM reads the transcript at every step), 'cached' (the "
            "top-k log-probabilities step 1 kept with --teacher_top_k; no teacher forward), or 'auto': cached when "
            "every dataset holds it for this prompt and temperature, else live. See docs/training.md.",
            "choices": list(TEACHER_SOURCES),
        },
    )
    padding_free: bool = field(
        default=False,
        metadata={
            "help": "Pack each batch's LLM sequences into one row without padding (position_ids restart per sample; "
            "sdpa or flash attention keep them apart): no compute on padding."
        },
    )
    ce_weight: float = field(default=1.0, metadata={"help": "Weight of the cross-entropy term."})
    kl_weight: float = field(default=1.0, metadata={"help": "Weight of the KL term."})
    ctc_weight: float = field(default=1.0, metadata={"help": "Weight of the CTC term."})
    chars_weight: float = field(default=1.0, metadata={"help": "Weight of the character CTC term."})
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
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Start afresh in an --output_dir that holds a previous run (its checkpoints and rejects are "
            "deleted). Without it such a folder is refused, unless it holds a checkpoint: the run resumes from it."
        },
    )
    max_skipped_fraction: float = field(
        default=0.2,
        metadata={
            "help": "Stop with an error when more than this fraction of the rows seen has unusable audio. Real "
            "corpora lose well under 1%% of their clips; beyond 20%% the cause is systematic (wrong audio column, "
            "missing folder, unsupported codec) and the run would train on another corpus than the one asked for."
        },
    )
    ddp_find_unused_parameters: bool | None = field(
        default=False, metadata={"help": "Every trainable parameter is used at every step: no search needed."}
    )
    encoder_states_dir: str | None = field(
        default=None,
        metadata={
            "help": "Run the frozen speech encoder once per clip: store its states here (float16, keyed by the "
            "clip's samples, refused for another encoder) and read them on later epochs and runs. SpecAugment's "
            "time masks then act on the states; frequency masks are refused."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if not torch.accelerator.is_available():
            self.dataloader_pin_memory = False  # pinning needs an accelerator: the DataLoader would only warn
        if not 0.0 <= self.max_skipped_fraction <= 1.0:
            raise ValueError(f"--max_skipped_fraction must be in [0, 1], got {self.max_skipped_fraction}.")
        if self.remove_unused_columns:
            raise ValueError("train_adapter.py decodes audio in its collator: --remove_unused_columns must be False.")
        if not 0 < self.kl_temperature < float("inf"):  # NaN fails every comparison
            raise ValueError(
                f"--kl_temperature must be a finite number above 0, got {self.kl_temperature}: at 0 the KL is NaN, "
                "below 0 it rewards the teacher's least likely tokens."
            )

    @property
    def loss_terms(self) -> set[str]:
        """The terms of the objective: a subset of {"ce", "kl", "ctc", "chars"}."""
        return set(self.loss.split("+"))


# ----------------------------------------------------------------------------------------------------- main


def parse_arguments(
    args: list[str] | None = None,
) -> tuple[ModelArguments, DataArguments, BlspTrainingArguments, AugmentationArguments]:
    """Command-line flags, or one .json/.yaml file holding them."""
    return parse_script_arguments((ModelArguments, DataArguments, BlspTrainingArguments, AugmentationArguments), args)


def check_encoder_cache(model_args: ModelArguments, augmentation_args: AugmentationArguments):
    """Stored encoder states need a frozen encoder, and masks that can act on them."""
    if model_args.train_speech_encoder or model_args.train_speech_encoder_top_layers:
        raise ValueError("--encoder_states_dir stores a frozen encoder's states: the encoder cannot train too.")
    if augmentation_args.num_frequency_masks and augmentation_args.max_frequency_mask_bins:
        raise ValueError(
            "--encoder_states_dir: SpecAugment's frequency masks act on log-mel bins, which stored encoder states no "
            "longer have. Drop --num_frequency_masks (time masks act on the states)."
        )


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


def main(args: list[str] | None = None):
    model_args, data_args, training_args, augmentation_args = parse_arguments(args)
    check_one_training(training_args)
    setup_logging(training_args)
    with training_args.main_process_first(desc="checking the output folder"):
        training_args.resume_from_checkpoint = checkpoint_to_resume(training_args)
        models = {name: getattr(model_args, name) for name in MODEL_FLAGS}
        fingerprints = check_resumed_models(models, training_args.resume_from_checkpoint)

    with training_args.main_process_first(desc="preparing datasets"):
        train_dataset, eval_dataset, metadatas = load_datasets(data_args, training_args)
    instructions = sorted({dataset_instruction(data_args, metadata) for metadata in metadatas})
    prompt_layout = agreed_setting("prompt_layout", data_args.prompt_layout, metadatas, None)
    system_prompt = agreed_setting("system_prompt", data_args.system_prompt, metadatas, None)

    if data_args.streaming:  # each process reads its own shards of the stream (no dispatching from process 0)
        training_args.accelerator_config.dispatch_batches = False
    set_seed(training_args.seed)
    model, processor = load_model_and_processor(model_args, prompt_layout, system_prompt)
    prompt = {
        "instruction": [dataset_instruction(data_args, metadata) for metadata in metadatas],
        "prompt_layout": processor.prompt_layout,
        "system_prompt": processor.system_prompt,
    }
    has_cache = all(
        dataset is None or TEACHER_IDS in (dataset.column_names or []) for dataset in (train_dataset, eval_dataset)
    )
    cached_teacher = use_cached_teacher(
        training_args, cached_teacher_problem(training_args, metadatas, prompt, has_cache)
    )
    teacher = teacher_description(training_args, cached_teacher, metadatas)
    bases = adapter_only_bases(model_args, model.config) if model_args.save_adapter_only else None
    if training_args.padding_free and model.config.speech_compression:
        raise ValueError(
            "--padding_free cannot leave speech frames out (speech_compression='ctc' masks them): drop one of them."
        )
    if "chars" in training_args.loss_terms and not model.config.adapter_characters:
        raise ValueError(
            "--loss chars trains the adapter's character head, which this model has none of: pass "
            '--adapter_characters (e.g. " abcdefghijklmnopqrstuvwxyz\'").'
        )
    if model_args.match_embedding_scale:
        factor = model.match_speech_scale_to_embeddings()
        logger.info("Adapter output scaled by %.4f to the LLM's embedding norm.", factor)
    select_trainable_parameters(
        model, model_args.train_speech_encoder, top_layers=model_args.train_speech_encoder_top_layers
    )
    if model_args.lora_r:
        add_lora(model, model_args)
    keep_trainable_in_float32(model)
    trainable = sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)
    logger.info("Trainable parameters: %d of %d.", trainable, sum(p.numel() for p in model.parameters()))

    encoder_cache = None
    if training_args.encoder_states_dir:
        check_encoder_cache(model_args, augmentation_args)
        fingerprint = encoder_fingerprint(model, processor.feature_extractor, processor.audio_padding_seconds)
        encoder_cache = EncoderStateCache(training_args.encoder_states_dir, fingerprint)
    trainer = BlspTrainer(
        model=model,
        args=training_args,
        data_collator=SpeechPromptCollator(
            processor,
            with_teacher=needs_teacher(training_args.loss_terms),
            cached_teacher=cached_teacher,
            with_ctc_labels="ctc" in training_args.loss_terms,
            characters=model.config.adapter_characters if "chars" in training_args.loss_terms else None,
            rejects_path=audio_rejects_path(training_args),
            vocab_size=model.config.text_config.vocab_size,
            augmentation=SpeechAugmentation(
                augmentation_args, processor.feature_extractor.sampling_rate, training_args.seed
            )
            if augmentation_args.enabled
            else None,
            encoder_cache_keys=encoder_cache is not None,
        ),
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=processor,
        model_card_builder=partial(build_model_card, model_args, data_args, instructions, trainable, teacher=teacher),
        trained_rows_log=trained_rows_path(training_args) if data_args.log_trained_rows else None,
        encoder_cache=encoder_cache,
    )
    trainer.add_callback(RecordModels(fingerprints))
    check_requested_engine(trainer)
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    metrics = train_result.metrics
    counts = torch.tensor([trainer.trained_rows_count, trainer.skipped_audio_rows], device=training_args.device)
    metrics["train_rows"], metrics["skipped_audio_rows"] = trainer.accelerator.reduce(counts, reduction="sum").tolist()
    trainer.trained_rows_count = metrics["train_rows"]  # the model card's count: every process's rows
    if encoder_cache is not None:
        metrics["encoder_states_read"], metrics["encoder_states_computed"] = encoder_cache.hits, encoder_cache.misses
    check_usable_rows(metrics["train_rows"], metrics["skipped_audio_rows"], training_args, final=True)
    if metrics["skipped_audio_rows"] and trainer.is_world_process_zero():
        logger.warning("Skipped %d rows whose audio could not be decoded.", metrics["skipped_audio_rows"])
    logger.info("Trained on %d rows (rows seen more than once count each time).", metrics["train_rows"])
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
