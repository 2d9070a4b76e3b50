"""Step 2's training parts: the collator, the sampler, the `Trainer` subclass, and the model set up for training
(which parameters train, LoRA). The objectives are in `objectives.py`; `train_adapter.py` parses the arguments
and wires these together.
"""

import dataclasses
import json
import logging
import os
import shutil
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import PreTrainedConfig, Trainer, TrainerCallback, TrainerState
from transformers.loss.loss_utils import ForCausalLMLoss
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from configuration_blsp import IGNORE_INDEX
from modeling_blsp import BlspForConditionalGeneration
from processing_blsp import AudioInputError, BlspProcessor

from .augmentation import SpeechAugmentation
from .corpora import ROW_ID, TEACHER_IDS, TEACHER_LOGPROBS
from .encoder_states import CACHE_KEYS, clip_key, read_speech_states
from .objectives import (
    CACHED_TEACHER_KEYS,
    CHARACTER_LABELS_KEY,
    CTC_LABELS_KEY,
    OBJECTIVES,
    TEACHER_PREFIX,
    TrainingStep,
    response_logits,
    response_window,
)
from .rejects import JsonlLog, audio_source, reject_record

logger = logging.getLogger(__name__)

SKIPPED_ROWS_KEY = "num_skipped_rows"
ROW_IDS_KEY = "row_ids"
MIN_ROWS_BEFORE_CHECK = 200
"""Rows a process sees before `--max_skipped_fraction` is checked during training (a fraction of fewer is noise)."""
LORA_ADAPTER_DIR = "llm_lora"
LORA_SAVE_MODES = ("merged", "adapter")


# ----------------------------------------------------------------------------------------------------- data


def character_labels(text: str, characters: str) -> list[int]:
    """The text's characters as indices from 1 into `characters` (0 is CTC's blank): lower-cased, characters not in
    `characters` left out, then runs of white space as one space."""
    index = {character: position + 1 for position, character in enumerate(characters)}
    kept = "".join(character for character in text.lower() if character in index or character.isspace())
    return [index[character] for character in " ".join(kept.split())]


def padded_labels(rows: list[list[int]]) -> torch.Tensor:
    """(rows, longest) label indices, padded with -100."""
    tensors = [torch.tensor(ids, dtype=torch.long) for ids in rows]
    return nn.utils.rnn.pad_sequence(tensors, batch_first=True, padding_value=IGNORE_INDEX)


@dataclass
class SpeechPromptCollator:
    """Decodes each row's audio (soundfile + soxr) and builds the model inputs.

    Student: the prompt with the speech in place of the transcript, then the response (continuation, else transcript)
    and EOS as labels. Teacher (KL only, keys prefixed `teacher_`): the same prompt with the transcript, same response.
    Rows whose audio cannot be decoded, or whose cached teacher is unusable, are skipped, logged, recorded in
    `rejects_path` and counted under `num_skipped_rows`.
    """

    processor: BlspProcessor
    with_teacher: bool
    """Also build the teacher's inputs (see `needs_teacher`)."""
    cached_teacher: bool = False
    """With `with_teacher`: give step 1's cached top-k teacher of the response tokens (`CACHED_TEACHER_KEYS`,
    each (tokens, k) in reading order) instead of the teacher's inputs."""
    with_ctc_labels: bool = False
    """Also give the transcript's tokens, padded with -100, under `ctc_labels` (the `ctc` objective)."""
    characters: str | None = None
    """Also give the transcript's characters (lower-cased, spaces collapsed, others left out) as indices from 1 into
    these, padded with -100, under `character_labels` (the `chars` objective)."""
    rejects_path: str | None = None
    augmentation: SpeechAugmentation | None = None
    """Training only: speed and band of each decoded clip, masks on its features (`BlspTrainer` drops it when
    evaluating)."""
    vocab_size: int | None = None
    """The LLM's vocabulary (its logits' width): cached teacher ids must be below it (None: only not negative)."""
    encoder_cache_keys: bool = False
    """Give each clip's identity under `CACHE_KEYS` (the trainer reads its encoder states from `--encoder_states_dir`;
    SpecAugment's masks then act on the states, not the features). Not for clips over 30 s (several windows)."""

    def usable_rows(self, rows: list[dict]) -> tuple[list[dict], list]:
        """The rows whose audio decodes to a usable clip (and, read from the cache, whose teacher is usable), and
        those clips."""
        kept, clips = [], []
        for row in rows:
            problem = self.teacher_problem(row) if self.with_teacher and self.cached_teacher else None
            if problem is not None:
                logger.warning("Skipping row %s: %s", row.get(ROW_ID), problem)
                self.record_reject(row, ("unusable_teacher", problem))
                continue
            try:
                clip = self.processor.load_audio(row["audio"])  # refuses clips under MIN_AUDIO_SECONDS
            except AudioInputError as error:
                logger.warning("Skipping a row: %s", error)
                self.record_reject(row, ("unusable_audio", str(error)))
                continue
            kept.append(row)
            clips.append(self.augmentation.waveform(clip) if self.augmentation else clip)
        return kept, clips

    def teacher_problem(self, row: dict) -> str | None:
        """Why a row's cached teacher cannot be trained on (None when it can): one (k) position per response token
        and the end, finite log-probabilities at most 0, token ids inside the vocabulary."""
        response = self.processor.tokenizer(row.get("continuation") or row["text"], add_special_tokens=False)
        positions = len(response["input_ids"]) + 1
        try:
            ids, logprobs = np.asarray(row[TEACHER_IDS]), np.asarray(row[TEACHER_LOGPROBS], dtype=np.float32)
        except ValueError:  # ragged
            return "its cached teacher is not a (positions, k) array"
        if ids.ndim != 2 or ids.shape != logprobs.shape or ids.shape[0] != positions:
            return (
                f"its cached teacher has shape {ids.shape} (log-probs {logprobs.shape}) but its response has "
                f"{positions} tokens (continuation and EOS): step 1 ran another tokenizer or the response was "
                "changed. Make the continuations again with this LLM, or train with --teacher live."
            )
        if not np.isfinite(logprobs).all() or (logprobs > 0).any():
            return "its cached teacher holds log-probabilities that are not finite or above 0"
        if ids.size and (ids.min() < 0 or (self.vocab_size is not None and ids.max() >= self.vocab_size)):
            return f"its cached teacher holds token ids outside the LLM's vocabulary (0 to {self.vocab_size})"
        return None

    def record_reject(self, row: dict, reason: tuple[str, str]):
        """Append the skipped row (row id, audio source, reason) to `rejects_path`, if set."""
        if self.rejects_path is not None:
            record = reject_record(row.get(ROW_ID, -1), audio_source(row["audio"]), reason)
            with open(self.rejects_path, "a", encoding="utf-8") as file:  # rare: one short line, opened each time
                file.write(json.dumps(record) + "\n")

    def __call__(self, rows: list[dict]) -> dict:
        kept, clips = self.usable_rows(rows)
        batch = {SKIPPED_ROWS_KEY: torch.tensor(len(rows) - len(kept))}
        if not kept:
            return batch
        if "corpus" in kept[0]:  # streamed rows: (corpus, row id) of each, for --log_trained_rows
            batch[ROW_IDS_KEY] = torch.tensor([[row["corpus"], row["row_id"]] for row in kept])
        responses = [row.get("continuation") or row["text"] for row in kept]
        student = self.processor(
            text=[self.processor.render_prompt(row["instruction"]) for row in kept],
            audio=clips,
            text_target=responses,
        )
        if self.encoder_cache_keys and len(student["input_features"]) == len(kept):
            batch[CACHE_KEYS] = [clip_key(clip) for clip in clips]
        elif self.augmentation:
            student["input_features"] = self.augmentation.features(
                student["input_features"], student["input_features_mask"]
            )
        batch.update(student)
        if self.with_teacher and self.cached_teacher:
            batch.update(self.cached_teacher_tensors(kept))
        elif self.with_teacher:
            teacher = self.processor(
                text=[self.processor.render_prompt(row["instruction"], row["text"]) for row in kept],
                text_target=responses,
            )
            batch.update({TEACHER_PREFIX + key: value for key, value in teacher.items()})
        if self.with_ctc_labels:
            tokens = self.processor.tokenizer([row["text"] for row in kept], add_special_tokens=False)["input_ids"]
            batch[CTC_LABELS_KEY] = padded_labels(tokens)
        if self.characters:
            characters = [character_labels(row["text"], self.characters) for row in kept]
            batch[CHARACTER_LABELS_KEY] = padded_labels(characters)
        return batch

    @staticmethod
    def cached_teacher_tensors(rows: list[dict]) -> dict:
        """The rows' cached teachers (checked by `teacher_problem`) concatenated in reading order."""
        ids = torch.cat([torch.tensor(row[TEACHER_IDS], dtype=torch.long) for row in rows])
        logprobs = torch.cat([torch.tensor(row[TEACHER_LOGPROBS], dtype=torch.float16) for row in rows])
        return dict(zip(CACHED_TEACHER_KEYS, (ids, logprobs)))


def checkpoint_to_resume(args) -> str | None:
    """The checkpoint to resume from: `--resume_from_checkpoint`, else the folder's last one (as transformers'
    examples do). A folder holding another run is refused unless `--overwrite_output_dir`, which clears it first."""
    directory = args.output_dir
    if args.resume_from_checkpoint is not None or not os.path.isdir(directory) or not os.listdir(directory):
        if isinstance(args.resume_from_checkpoint, str):
            check_not_finished(args.resume_from_checkpoint, args.max_steps)
        return args.resume_from_checkpoint
    if args.overwrite_output_dir:
        if args.should_save:  # the previous run's checkpoints and appended logs would sit beside the new ones
            for name in os.listdir(directory):
                path = os.path.join(directory, name)
                if name.startswith(PREFIX_CHECKPOINT_DIR) and os.path.isdir(path):
                    shutil.rmtree(path)
                elif name.endswith(".jsonl") and name.startswith(("audio_rejects-", "trained_rows-")):
                    os.remove(path)
        return None
    last_checkpoint = get_last_checkpoint(directory)
    if last_checkpoint is None:
        raise ValueError(
            f"--output_dir {directory!r} already holds files and no checkpoint to resume from: pass "
            "--overwrite_output_dir to replace that run, or choose another folder."
        )
    check_not_finished(last_checkpoint, args.max_steps)
    logger.info("Resuming from %s (pass --overwrite_output_dir to start afresh).", last_checkpoint)
    return last_checkpoint


def check_not_finished(checkpoint: str, max_steps: int):
    """Refuse to resume a checkpoint already at `max_steps`: the Trainer would train one step past it and save that
    over the finished run."""
    state = os.path.join(checkpoint, TRAINER_STATE_NAME)
    if max_steps > 0 and os.path.exists(state):
        step = TrainerState.load_from_json(state).global_step
        if step >= max_steps:
            raise ValueError(
                f"{checkpoint} is already at step {step} of --max_steps {max_steps}: that run is trained (the "
                "checkpoint holds its model). Raise --max_steps to train on, or pass --overwrite_output_dir to start "
                "afresh."
            )


def check_usable_rows(trained: int, skipped: int, args, final: bool = False):
    """Stop when more than `args.max_skipped_fraction` of the rows seen had unusable audio (or cached teacher).

    During training the check waits for `MIN_ROWS_BEFORE_CHECK` rows on this process; at the end (`final`, counts of
    every process) it always applies, so a run on no usable row never saves a model.
    """
    seen = trained + skipped
    if (seen >= MIN_ROWS_BEFORE_CHECK or final) and (trained == 0 or skipped > args.max_skipped_fraction * seen):
        raise ValueError(
            f"Only {trained} of {seen} rows had usable audio and teacher ({skipped} skipped, more than "
            f"--max_skipped_fraction {args.max_skipped_fraction}). The reasons are in "
            f"{args.output_dir}/audio_rejects-*.jsonl: fix the audio column, paths, codec or cached teacher, or raise "
            "--max_skipped_fraction."
        )


def audio_rejects_path(training_args) -> str:
    """This process's record of the rows skipped for unusable audio (created on the first one)."""
    os.makedirs(training_args.output_dir, exist_ok=True)
    return os.path.join(training_args.output_dir, f"audio_rejects-{training_args.process_index:05d}.jsonl")


def trained_rows_path(training_args) -> str:
    """This process's log of trained (corpus, row_id) pairs, one line per micro-batch with its optimizer step."""
    return os.path.join(training_args.output_dir, f"trained_rows-{training_args.process_index:05d}.jsonl")


# ----------------------------------------------------------------------------------------------------- model


def check_model_type(name_or_path: str, expected: str, hint: str):
    """Fail with a clear message when a checkpoint is not of the `expected` model type."""
    config_dict, _ = PreTrainedConfig.get_config_dict(name_or_path)
    model_type = config_dict.get("model_type")
    if model_type != expected:
        raise ValueError(f"{name_or_path!r} is a {model_type!r} checkpoint, not a {expected!r} one. {hint}")


def load_model_and_processor(model_args, prompt_layout, system_prompt):
    """A new BLSP model (Whisper + LLM, new adapter) or an existing checkpoint, with its processor; the adapter
    settings given on the command line replace the checkpoint's."""
    names = ("adapter_conv_stride", "adapter_num_transformer_layers", "adapter_characters")
    architecture = {name: getattr(model_args, name) for name in names if getattr(model_args, name) is not None}
    padding = (
        {} if model_args.audio_padding_seconds is None else {"audio_padding_seconds": model_args.audio_padding_seconds}
    )
    if model_args.model_name_or_path is not None:
        path = model_args.model_name_or_path
        check_model_type(
            path, "blsp", "Pass --speech_encoder_name_or_path and --llm_name_or_path to build a new BLSP model."
        )
        model = BlspForConditionalGeneration.from_pretrained(path, dtype=model_args.dtype, **architecture)
        # Our own classes load the checkpoint; code it ships (a tokenizer class file) runs only with consent.
        processor = BlspProcessor.from_pretrained(path, trust_remote_code=model_args.trust_remote_code, **padding)
        if model_args.encoder_padding is not None:
            model.config.encoder_padding = model_args.encoder_padding
    else:
        speech, text = model_args.speech_encoder_name_or_path, model_args.llm_name_or_path
        check_model_type(speech, "whisper", "--speech_encoder_name_or_path must be a Whisper checkpoint.")
        model = BlspForConditionalGeneration.from_speech_text_pretrained(
            speech,
            text,
            dtype=model_args.dtype,
            encoder_padding=model_args.encoder_padding or "longest",
            **architecture,
        )
        processor = BlspProcessor.from_speech_text_pretrained(speech, text, config=model.config, **padding)
    processor.speech_downsampling = [list(conv) for conv in model.config.speech_downsampling]
    if model_args.speech_compression is not None:
        model.config.speech_compression = model_args.speech_compression
    processor.prompt_layout = prompt_layout or processor.prompt_layout
    processor.system_prompt = system_prompt if system_prompt is not None else processor.system_prompt
    return model, processor


def adapter_only_bases(model_args, config) -> tuple[str, str]:
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


def select_trainable_parameters(model: BlspForConditionalGeneration, train_speech_encoder: bool, top_layers: int = 0):
    """Freeze everything but the adapter, and the encoder when asked: all of it but its positional table, or its
    top `top_layers` layers and final layer norm."""
    model.requires_grad_(False)
    model.adapter.requires_grad_(True)
    encoder = model.speech_encoder
    if train_speech_encoder:
        encoder.requires_grad_(True)
        encoder.embed_positions.requires_grad_(False)
    elif top_layers:
        if top_layers > len(encoder.layers):
            raise ValueError(f"The speech encoder has {len(encoder.layers)} layers; cannot train the top {top_layers}.")
        encoder.layers[-top_layers:].requires_grad_(True)
        encoder.layer_norm.requires_grad_(True)


def add_lora(model: BlspForConditionalGeneration, model_args):
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


# ----------------------------------------------------------------------------------------------------- trainer


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


def pack_rows(inputs: dict, labels: torch.Tensor) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """A left-padded batch as one row without padding (transformers' padding-free format, as
    `DataCollatorWithFlattening` makes it): `position_ids` restart at 0 for each row, which sdpa and flash attention
    read as separate sequences. Returns the packed inputs, the positions whose logits predict a response token, and
    those tokens, (1, tokens).

    The speech embeddings are scattered in reading order, as in the padded batch. No logit predicts across rows: each
    row starts with prompt tokens, which are never learned.
    """
    mask = inputs["attention_mask"].bool()
    packed = {key: value for key, value in inputs.items() if key not in ("input_ids", "attention_mask")}
    packed["input_ids"] = inputs["input_ids"][mask][None]
    packed["position_ids"] = (mask.long().cumsum(-1) - 1)[mask][None]
    labels = labels[mask]
    keep = (labels[1:] != IGNORE_INDEX).nonzero().squeeze(-1)
    return packed, keep, labels[keep + 1][None]


class NonFiniteTrainingError(RuntimeError):
    """A loss or gradient norm that is not finite: training stops before the optimizer step, saving nothing."""


def non_finite_error(what: str, value, step: int) -> NonFiniteTrainingError:
    return NonFiniteTrainingError(
        f"Optimizer step {step}: the {what} is {value}. Training stopped before the weights changed and nothing was "
        "saved (checkpoints already in --output_dir are of earlier, finite steps). Look for non-finite values in "
        "the model or data, lower --learning_rate, or train in bf16 rather than fp16."
    )


class StopOnNonFiniteGradients(TrainerCallback):
    """Stops training before the optimizer step when the gradient norm of the trainable parameters is not finite, so
    that no NaN reaches the weights. (Not under fp16 loss scaling, whose scaler skips such steps itself; DeepSpeed
    keeps gradients in its own buffers, where only the loss check applies.)"""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        gradients = [parameter.grad for parameter in model.parameters() if parameter.grad is not None]
        norm = torch.nn.utils.get_total_norm(gradients) if gradients else None
        if norm is not None and not torch.isfinite(norm):
            raise non_finite_error("gradient norm", float(norm), state.global_step + 1)


class BlspTrainer(Trainer):
    """A `Trainer` with the BLSP objectives, logits only on response positions, skipped-row counting, and a stop at
    the first loss or gradient norm that is not finite."""

    def __init__(
        self, *args, model_card_builder=None, trained_rows_log: str | None = None, encoder_cache=None, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.model_card_builder = model_card_builder
        self.encoder_cache = encoder_cache
        self.skipped_audio_rows = 0
        self.trained_rows_count = 0
        self.trained_rows = JsonlLog(trained_rows_log) if trained_rows_log else None
        self.term_sums, self.term_count = {}, 0
        # The loss is normalized by `num_items_in_batch` (the whole accumulated batch's response tokens).
        self.loss_is_scaled_for_ga = True
        if self.accelerator.scaler is None:
            self.add_callback(StopOnNonFiniteGradients())

    def training_step(self, model, inputs, num_items_in_batch=None):
        """The Trainer's step, stopped (before any optimizer step) by a loss that is not finite."""
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss):
            raise non_finite_error("loss", float(loss), self.state.global_step + 1)
        return loss

    def _get_dataloader(self, *args, is_training: bool = False, **kwargs):
        """Evaluation batches without the training collator's augmentation."""
        collator = self.data_collator
        if not is_training and getattr(collator, "augmentation", None) is not None:
            self.data_collator = dataclasses.replace(collator, augmentation=None)
        try:
            return super()._get_dataloader(*args, is_training=is_training, **kwargs)
        finally:
            self.data_collator = collator

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

    def model_outputs(self, model, inputs: dict, labels: torch.Tensor, num_items_in_batch=None) -> tuple:
        """Forward with labels, computing logits only where they predict a response token; returns the outputs (with
        the loss) and those (tokens, vocab) logits in reading order.

        Padded: logits on the trailing window that holds every response (left padding). `--padding_free`: the rows
        packed into one, without padding (`pack_rows`), logits at the response positions only.
        """
        loss_kwargs = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
        if getattr(self.args, "padding_free", False):
            packed, keep, targets = pack_rows(inputs, labels)
            outputs = model(**packed, logits_to_keep=keep, use_cache=False)  # with a cache, packing goes unseen
            vocab_size = outputs.logits.shape[-1]
            outputs.loss = ForCausalLMLoss(outputs.logits, None, vocab_size, shift_labels=targets, **loss_kwargs)
            return outputs, outputs.logits[0]
        window = response_window(labels)
        outputs = model(**inputs, labels=labels[:, -window:], logits_to_keep=window, **loss_kwargs)
        return outputs, response_logits(outputs.logits, labels[:, -window:])

    def teacher_logits(self, model, teacher_inputs: dict) -> torch.Tensor:
        """The frozen LLM (no adapter: the prompt holds no speech; LoRA disabled) on the transcript prompt."""
        labels = teacher_inputs.pop("labels")
        blsp = self.accelerator.unwrap_model(model)
        lora_off = blsp.language_model.disable_adapter() if uses_lora(blsp) else nullcontext()
        with torch.no_grad(), lora_off:
            return self.model_outputs(model, teacher_inputs, labels)[1]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        skipped = int(inputs.pop(SKIPPED_ROWS_KEY, 0))
        if model.training:
            self.skipped_audio_rows += skipped
            self.trained_rows_count += len(inputs["input_ids"]) if "input_ids" in inputs else 0
            check_usable_rows(self.trained_rows_count, self.skipped_audio_rows, self.args)
        row_ids = inputs.pop(ROW_IDS_KEY, None)
        if self.trained_rows is not None and row_ids is not None and model.training:
            self.trained_rows.append([{"step": self.state.global_step + 1, "rows": row_ids.tolist()}])
        keys = inputs.pop(CACHE_KEYS, None)
        if keys is not None and self.encoder_cache is not None and "input_ids" in inputs:
            augmentation = getattr(self.data_collator, "augmentation", None) if model.training else None
            model_only = self.accelerator.unwrap_model(model)
            inputs = read_speech_states(self.encoder_cache, model_only, inputs, keys, augmentation)
        if "input_ids" not in inputs:  # every row of the batch was unreadable
            loss = sum(parameter.sum() for parameter in model.parameters() if parameter.requires_grad) * 0.0
            return (loss, None) if return_outputs else loss
        step = TrainingStep(self, model, inputs, num_items_in_batch)
        values = {name: OBJECTIVES[name].loss(step) for name in OBJECTIVES if name in self.args.loss_terms}
        loss = sum(getattr(self.args, OBJECTIVES[name].weight) * value for name, value in values.items())
        if model.training and len(values) > 1:  # each term's mean over the logging interval, beside the sum
            for name, value in values.items():
                self.term_sums[name] = self.term_sums.get(name, 0.0) + float(value.detach())
            self.term_count += 1
        outputs = step.student[0] if "student" in vars(step) else None
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            loss = loss * self.accelerator.num_processes  # the token count was summed over processes
        return (loss, outputs) if return_outputs else loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs.pop(ROW_IDS_KEY, None)
        if self.encoder_cache is None:
            inputs.pop(CACHE_KEYS, None)
        if "input_ids" not in inputs:  # every row of the batch was unreadable (logged and recorded by the collator)
            return None, None, None
        return super().prediction_step(model, inputs, prediction_loss_only, ignore_keys)

    def log(self, logs: dict[str, float], start_time: float | None = None):
        if self.skipped_audio_rows:
            logs["skipped_audio_rows"] = self.skipped_audio_rows
        if self.term_count and "loss" in logs:
            scale = self.args.gradient_accumulation_steps / self.term_count
            logs.update({f"loss_{name}": round(total * scale, 4) for name, total in self.term_sums.items()})
            self.term_sums, self.term_count = {}, 0
        super().log(logs, start_time)

    def create_model_card(self, **kwargs):
        """Write BLSP's own model card (Trainer.push_to_hub calls this before uploading)."""
        if self.is_world_process_zero() and self.model_card_builder is not None:
            self.model_card_builder(self).save(os.path.join(self.args.output_dir, "README.md"))
