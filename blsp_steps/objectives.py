"""Step 2's objectives: one table, `OBJECTIVES`, and what its terms read.

A new objective is one entry of `OBJECTIVES`: the dataset columns it needs, whether it needs the teacher (the frozen
LLM reading the transcript), its loss term (a function of a `TrainingStep`, which computes the student, teacher or
speech outputs once and only when a term reads them) and the flag that weights it. The column checks, the collator's
inputs, `BlspTrainer.compute_loss` (`training.py`), the `--loss` choices and the model card read the table.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from itertools import combinations

import torch
from torch import nn

from adapter_blsp import character_logits
from configuration_blsp import IGNORE_INDEX
from modeling_blsp import BlspForConditionalGeneration, ctc_readout

from .corpora import AUDIO, CONTINUATION, TEXT

logger = logging.getLogger(__name__)

TEACHER_PREFIX = "teacher_"
CTC_LABELS_KEY = "ctc_labels"
CHARACTER_LABELS_KEY = "character_labels"
CACHED_TEACHER_KEYS = ("cached_teacher_ids", "cached_teacher_logprobs")
TEACHER_SOURCES = ("auto", "cached", "live")


# ----------------------------------------------------------------------------------------------------- objectives


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


def top_k_kl_divergence_sum(
    student_logits: torch.Tensor, teacher_ids: torch.Tensor, teacher_logprobs: torch.Tensor, temperature: float
) -> torch.Tensor:
    """`kl_divergence_sum` against a cached teacher: its top-k tokens' log-probabilities at `temperature`.

    The distributions compared have k + 1 outcomes: the teacher's k tokens, and one bucket for every other token (the
    teacher's tail mass is 1 - its top-k mass; the student's is its own mass outside those k tokens). That is the
    exact KL when k is the vocabulary, and a lower bound otherwise (what the bucket hides is the teacher's shape
    inside its tail). The student still pays for mass it puts outside the teacher's support, unlike a teacher
    renormalised over its top k.
    """
    student = nn.functional.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = teacher_logprobs.float().exp()
    top_mass = teacher.sum(-1, keepdim=True)
    tail = (1.0 - top_mass).clamp(min=0.0)
    teacher, tail = teacher / (top_mass + tail), tail / (top_mass + tail)  # float16 rounding: the top k may pass 1
    loss = (torch.xlogy(teacher, teacher) - teacher * student.gather(-1, teacher_ids)).sum()
    if teacher_ids.shape[-1] < student.shape[-1]:
        student_tail = student.scatter(-1, teacher_ids, float("-inf")).logsumexp(-1, keepdim=True)
        loss = loss + (torch.xlogy(tail, tail) - tail * student_tail).sum()
    return loss * temperature**2


def speech_rows(model: BlspForConditionalGeneration, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The adapter's outputs of each row, zero-padded: (rows, frames, hidden), and their lengths.

    The speech embeddings come concatenated in row order, as `forward` scatters them into the speech placeholders,
    so row i owns the next (number of its placeholders) of them.
    """
    embeds = model.get_speech_features(
        inputs.get("input_features"),
        inputs.get("input_features_mask"),
        inputs.get("speech_encoder_states"),
        inputs.get("speech_encoder_lengths"),
    )
    lengths = (inputs["input_ids"] == model.config.speech_token_id).sum(-1)
    return nn.utils.rnn.pad_sequence(embeds.split(lengths.tolist()), batch_first=True), lengths


class TrainingStep:
    """What the objectives of one batch read, each computed once and only when a term asks for it."""

    def __init__(self, trainer, model, inputs: dict, num_items_in_batch):
        """`trainer`: the `BlspTrainer` (its `model_outputs` and `teacher_logits` run the LLM)."""
        self.trainer, self.model, self.inputs, self.num_items = trainer, model, inputs, num_items_in_batch
        self.args = trainer.args
        self.teacher_inputs = {
            key[len(TEACHER_PREFIX) :]: inputs.pop(key) for key in list(inputs) if key.startswith(TEACHER_PREFIX)
        }
        self.cached_teacher = tuple(inputs.pop(key) for key in CACHED_TEACHER_KEYS if key in inputs) or None
        self.ctc_labels = inputs.pop(CTC_LABELS_KEY, None)
        self.character_labels = inputs.pop(CHARACTER_LABELS_KEY, None)
        self.labels = inputs.pop("labels")

    @cached_property
    def student(self) -> tuple:
        """The LLM's outputs given the speech (with the loss), and its (tokens, vocab) logits on the response."""
        return self.trainer.model_outputs(self.model, self.inputs, self.labels, self.num_items)

    @cached_property
    def teacher(self) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """The teacher's (tokens, vocab) logits on the response, or step 1's cached (token ids, log-probs), each
        (tokens, k)."""
        if self.cached_teacher is not None:
            return self.cached_teacher
        return self.trainer.teacher_logits(self.model, self.teacher_inputs)

    @cached_property
    def speech(self) -> tuple[torch.Tensor, torch.Tensor]:
        return speech_rows(self.trainer.accelerator.unwrap_model(self.model), self.inputs)

    def local_mean(self, loss: torch.Tensor) -> torch.Tensor:
        """A term averaged over this micro-batch, scaled as the trainer expects: the other terms are divided by the
        tokens of the whole accumulated (and, with `average_tokens_across_devices`, all-process) batch."""
        if not self.model.training:
            return loss
        scale = self.trainer.current_gradient_accumulation_steps
        if self.args.average_tokens_across_devices and self.num_items is not None:
            scale *= self.trainer.accelerator.num_processes
        return loss / scale


def cross_entropy_term(step: TrainingStep) -> torch.Tensor:
    """The LLM's own loss on the labels: mean cross-entropy per response token of the (accumulated) batch."""
    return step.student[0].loss


def kl_term(step: TrainingStep) -> torch.Tensor:
    """KL to the teacher on the response positions, per response token of the (accumulated) batch."""
    student = step.student[1]
    tokens = step.num_items if step.num_items is not None else student.shape[0]
    if step.cached_teacher is not None:
        return top_k_kl_divergence_sum(student, *step.teacher, step.args.kl_temperature) / tokens
    return kl_divergence_sum(student, step.teacher, step.args.kl_temperature) / tokens


def ctc_term(step: TrainingStep) -> torch.Tensor:
    """CTC between the adapter's outputs read through the LLM's token embeddings and the transcript's tokens.

    The logit of token v at a speech frame is the frame's dot product with v's input embedding, as a tied LM head
    would read it; the blank's logit is 0 (no parameter, no token given up). Mean over rows of the loss per target
    token (torch's `reduction="mean"`) over the micro-batch. Needs no LLM forward.
    """
    speech, lengths = step.speech
    embeddings = step.trainer.accelerator.unwrap_model(step.model).get_input_embeddings().weight
    logits = ctc_readout(speech, embeddings).float()
    labels = step.ctc_labels
    labels = labels.where(labels == IGNORE_INDEX, labels + 1)  # index 0 is the blank
    return step.local_mean(ctc_loss(logits, lengths, labels))


def characters_term(step: TrainingStep) -> torch.Tensor:
    """CTC between the adapter's auxiliary character head (`BlspConfig.adapter_characters`) and the transcript's
    characters, read from the same adapter outputs as `ctc_term` (mean as there)."""
    speech, lengths = step.speech
    adapter = step.trainer.accelerator.unwrap_model(step.model).adapter
    logits = character_logits(adapter, speech).float()
    return step.local_mean(ctc_loss(logits, lengths * adapter.characters_per_frame, step.character_labels))


def ctc_loss(logits: torch.Tensor, lengths: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """torch's CTC loss (mean over rows of the loss per target) of (rows, positions, 1 + classes) logits, blank at
    column 0, against `labels` (class indices from 1, padded with -100)."""
    target_lengths = (labels != IGNORE_INDEX).sum(-1)
    log_probs = nn.functional.log_softmax(logits, dim=-1).transpose(0, 1)
    targets = labels[labels != IGNORE_INDEX]
    return nn.functional.ctc_loss(log_probs, targets, lengths, target_lengths, blank=0, zero_infinity=True)


@dataclass(frozen=True)
class Objective:
    """One loss term of step 2: what it reads, what it computes and how the model card describes it."""

    columns: tuple[str, ...]
    """Dataset columns it needs."""
    needs_teacher: bool
    """Whether it needs the teacher's logits (the frozen LLM on the transcript prompt)."""
    loss: Callable
    """`TrainingStep` -> loss (the step computes what the term reads, once)."""
    weight: str
    """The training argument that weights the term."""
    settings: tuple[str, ...]
    """Training arguments the model card lists when the term is used."""
    description: str
    """The model card's sentence when the term is the whole objective (formatted with the training arguments)."""
    term: str
    """The model card's words for the term inside a sum."""


OBJECTIVES = {
    "ce": Objective(
        columns=(AUDIO, TEXT, CONTINUATION),
        needs_teacher=False,
        loss=cross_entropy_term,
        weight="ce_weight",
        settings=(),
        description="cross-entropy on the continuation and EOS, given the speech (the BLSP paper)",
        term="cross-entropy on the continuation",
    ),
    "kl": Objective(
        columns=(AUDIO, TEXT),
        needs_teacher=True,
        loss=kl_term,
        weight="kl_weight",
        settings=("kl_temperature",),
        description="KL divergence (temperature {kl_temperature}) between the LLM's next-token distributions on the "
        "response given the speech and given the transcript, the frozen LLM as teacher (BLSP-KD)",
        term="KL divergence (temperature {kl_temperature}) to the frozen LLM given the transcript",
    ),
    "ctc": Objective(
        columns=(AUDIO, TEXT),
        needs_teacher=False,
        loss=ctc_term,
        weight="ctc_weight",
        settings=(),
        description="CTC between the adapter's outputs, read through the LLM's token embeddings, and the transcript's "
        "tokens: an alignment warm-up before the BLSP objective, without any LLM forward (not in the BLSP paper)",
        term="CTC to the transcript's tokens through the LLM's embeddings",
    ),
    "chars": Objective(
        columns=(AUDIO, TEXT),
        needs_teacher=False,
        loss=characters_term,
        weight="chars_weight",
        settings=(),
        description="CTC between the adapter's auxiliary character head and the transcript's characters (not in the "
        "BLSP paper)",
        term="CTC to the transcript's characters (auxiliary head)",
    ),
}
LOSSES = tuple("+".join(terms) for size in range(1, len(OBJECTIVES) + 1) for terms in combinations(OBJECTIVES, size))
"""The `--loss` choices: each objective alone, or any of them summed with their weights (names in table order)."""


def required_columns(loss_terms: set[str]) -> list[str]:
    """Columns the objective needs: the union over its terms, in table order."""
    columns = [column for name in OBJECTIVES if name in loss_terms for column in OBJECTIVES[name].columns]
    return list(dict.fromkeys(columns))


def needs_teacher(loss_terms: set[str]) -> bool:
    """Whether any term of the objective compares with the teacher."""
    return any(OBJECTIVES[name].needs_teacher for name in loss_terms)


def cached_teacher_problem(args, metadatas: list[dict], prompt: dict, has_cache: bool) -> str | None:
    """Why step 1's cached teacher cannot stand in for the live one here (None when it can).

    `has_cache`: whether the training (and evaluation) rows carry it, which they do when every dataset holds one of
    the same top-k. `prompt`: the instruction of each dataset (a list, in `metadatas` order), the prompt layout and
    system prompt step 2 uses; the cache holds the teacher of the prompt step 1 recorded, at its recorded temperature.
    """
    if not has_cache:
        return "not every dataset holds a cached teacher of the same top-k (generate_continuations.py --teacher_top_k)"
    for metadata, instruction in zip(metadatas, prompt["instruction"]):
        if metadata.get("teacher_temperature") != args.kl_temperature:
            return (
                f"the teacher was cached at temperature {metadata.get('teacher_temperature')}, --kl_temperature is "
                f"{args.kl_temperature}"
            )
        used = {
            "instruction": instruction,
            "prompt_layout": prompt["prompt_layout"],
            "system_prompt": prompt["system_prompt"],
        }
        for key, value in used.items():
            if metadata.get(key) != value:
                return f"step 2's {key} {value!r} is not step 1's {metadata.get(key)!r}"
    return None


def use_cached_teacher(args, problem: str | None) -> bool:
    """`--teacher`: `live`, `cached` (an error when `problem`), or `auto` (cached unless `problem`)."""
    if not needs_teacher(args.loss_terms) or args.teacher == "live":
        return False
    if problem is not None and args.teacher == "cached":
        raise ValueError(f"--teacher cached: {problem}. Pass --teacher live (or auto).")
    if problem is not None:
        logger.info("The KL objective runs the live teacher: %s.", problem)
    return problem is None


def teacher_description(args, cached: bool, metadatas: list[dict]) -> str | None:
    """The model card's `teacher` setting: None when no term has a teacher, else `live` or `cached (top-K,
    temperature T, from step 1)`."""
    if not needs_teacher(args.loss_terms):
        return None
    if not cached:
        return "live"
    return f"cached (top-{metadatas[0]['teacher_top_k']}, temperature {args.kl_temperature}, from step 1)"


def check_columns(column_names: list[str], name: str, loss_terms: set[str]):
    """Fail with a clear message when a dataset lacks the columns of the objective."""
    missing = [column for column in required_columns(loss_terms) if column not in column_names]
    if missing:
        raise ValueError(
            f"Dataset {name!r} has columns {column_names} but lacks {missing}: train_adapter.py needs "
            f"{required_columns(loss_terms)} for --loss {'+'.join(sorted(loss_terms))} (datasets made by "
            "generate_continuations.py have them; --loss kl needs no continuation)."
        )


def objective_description(args) -> str:
    """The model card's sentence for the objective of `args` (a `BlspTrainingArguments`)."""
    values = vars(args)
    terms = [name for name in OBJECTIVES if name in args.loss_terms]
    if len(terms) == 1:
        return OBJECTIVES[terms[0]].description.format(**values)
    return " + ".join(f"{values[OBJECTIVES[name].weight]} x {OBJECTIVES[name].term}" for name in terms).format(**values)


def objective_settings(args) -> dict:
    """The training arguments of the objective that the model card lists (weights only when terms are summed)."""
    terms = [name for name in OBJECTIVES if name in args.loss_terms]
    names = [setting for name in terms for setting in OBJECTIVES[name].settings]
    if len(terms) > 1:
        names += [OBJECTIVES[name].weight for name in terms]
    return {name: getattr(args, name) for name in names}
