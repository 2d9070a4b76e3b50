"""The miniature world's toy language: 21 content words, six sentence templates and four text tasks.

Every sentence fills one template with content words. Its four tasks are:

- **continue**: swap subject and object, then say the sentence again with every content word replaced by its partner
  word (the output depends on every content word, both copied and mapped, and on the template);
- **transcribe**: the sentence itself (its instruction says "Repeat": the words the LLM was trained on);
- **translate**: word-by-word into Nalish, a verb-final language with adjectives after nouns;
- **answer**: "Which animal comes first in the text?", answered by the subject.

The sentences are enumerated in a fixed order (a sentence's id is its index) and split once, with a seed, into
train and held-out sentences, stratified by template.
"""

import itertools
import math
import random
import re
from dataclasses import dataclass
from functools import cache

from processing_blsp import CONTINUATION_INSTRUCTION

NOUNS = ("cat", "dog", "bird", "fish", "horse", "mouse", "frog", "goat")
VERBS = ("sees", "likes", "chases", "helps", "finds")
ADJECTIVES = ("red", "blue", "green", "small", "old")
PLACES = ("park", "river", "garden")
FUNCTION_WORDS = ("the", "is", "in", "so", "and", "has")
SLOT_WORDS = {"subject": NOUNS, "object": NOUNS, "verb": VERBS, "adjective": ADJECTIVES, "place": PLACES}
CONTENT_WORDS = NOUNS + VERBS + ADJECTIVES + PLACES

SECOND_LANGUAGE = "Nalish"
NALISH_WORDS = {
    "cat": "miku", "dog": "wano", "bird": "tori", "fish": "sakan", "horse": "uma", "mouse": "nezu", "frog": "kaeru",
    "goat": "yagi", "sees": "miru", "likes": "suki", "chases": "oiru", "helps": "tasu", "finds": "mitsu",
    "red": "aka", "blue": "ao", "green": "midori", "small": "chisa", "old": "furu", "park": "koen", "river": "kawa",
    "garden": "niwa",
}  # fmt: skip
NALISH_FUNCTION_WORDS = ("lo", "esti", "na")

TEMPLATES = {
    "transitive": "the {subject} {verb} the {object}",
    "adjective_subject": "the {adjective} {subject} {verb} the {object}",
    "adjective_object": "the {subject} {verb} the {adjective} {object}",
    "attribute": "the {subject} is {adjective}",
    "bare": "{subject} {verb} {object}",
    "location": "the {subject} is in the {place}",
}
CONTINUATION_TEMPLATES = {
    "transitive": "so the {object} {verb} the {subject} and the {subject'} {verb'} the {object'}",
    "adjective_subject": (
        "so the {object} {verb} the {adjective} {subject} and the {adjective'} {subject'} {verb'} the {object'}"
    ),
    "adjective_object": (
        "so the {adjective} {object} {verb} the {subject} and the {subject'} {verb'} the {adjective'} {object'}"
    ),
    "attribute": "so the {adjective} {subject} and the {subject'} is {adjective'}",
    "bare": "so {object} {verb} {subject} and {subject'} {verb'} {object'}",
    "location": "so the {place} has the {subject} and the {subject'} is in the {place'}",
}
"""Subject and object swap places, then the sentence is said again with every content word replaced by its partner
(`{slot'}`): the continuation repeats every content word and also maps it, so an adapter cannot satisfy it with
anything but the words themselves."""
TRANSLATION_TEMPLATES = {
    "transitive": "lo {subject} lo {object} {verb}",
    "adjective_subject": "lo {subject} {adjective} lo {object} {verb}",
    "adjective_object": "lo {subject} lo {object} {adjective} {verb}",
    "attribute": "lo {subject} {adjective} esti",
    "bare": "{subject} {object} {verb}",
    "location": "lo {subject} lo {place} na esti",
}

CONTINUE_INSTRUCTION = CONTINUATION_INSTRUCTION
TRANSCRIBE_INSTRUCTION = "Repeat the following text."
TRANSLATE_INSTRUCTION = f"Translate the following text into {SECOND_LANGUAGE}."
QUESTION_INSTRUCTION = "Which animal comes first in the text?"
INSTRUCTIONS = {
    "continue": CONTINUE_INSTRUCTION,
    "transcribe": TRANSCRIBE_INSTRUCTION,
    "translate": TRANSLATE_INSTRUCTION,
    "answer": QUESTION_INSTRUCTION,
}

LEGACY_TASK_NAMES = {"repeat": "transcribe"}
"""Task names of records written before the world spoke the evaluation's vocabulary (the shipped manifests)."""


def current_task_names(record):
    """A record read from JSON with each legacy task name renamed, as a key or as a key's `task/...` prefix."""
    if isinstance(record, dict):
        return {current_task_key(key): current_task_names(value) for key, value in record.items()}
    if isinstance(record, list):
        return [current_task_names(value) for value in record]
    return record


def current_task_key(key: str) -> str:
    task, slash, rest = key.partition("/")
    return LEGACY_TASK_NAMES.get(task, task) + slash + rest


SPLIT_SEED = 0
HELD_OUT_FRACTION = 0.1


@dataclass(frozen=True)
class Sentence:
    """One sentence: its id (index in `all_sentences()`), template name and the content word of each slot."""

    sentence_id: int
    template: str
    slots: tuple[tuple[str, str], ...]

    @property
    def words(self) -> dict[str, str]:
        return dict(self.slots)

    @property
    def text(self) -> str:
        return TEMPLATES[self.template].format(**self.words)


def partner(word: str) -> str:
    """The next word of the same category (cyclically): the continuation's word for `word`."""
    for category in (NOUNS, VERBS, ADJECTIVES, PLACES):
        if word in category:
            return category[(category.index(word) + 1) % len(category)]
    raise KeyError(f"{word!r} is not a content word")


def continuation(sentence: Sentence) -> str:
    partners = {f"{slot}'": partner(word) for slot, word in sentence.slots}
    return CONTINUATION_TEMPLATES[sentence.template].format(**sentence.words, **partners)


def translation(sentence: Sentence) -> str:
    return TRANSLATION_TEMPLATES[sentence.template].format(**{k: NALISH_WORDS[v] for k, v in sentence.slots})


def answer(sentence: Sentence) -> str:
    return sentence.words["subject"]


def response(task: str, sentence: Sentence) -> str:
    """The correct response of `task` ("continue", "transcribe", "translate" or "answer") for `sentence`."""
    responses = {"continue": continuation, "transcribe": lambda s: s.text, "translate": translation, "answer": answer}
    return responses[task](sentence)


def template_slots(template: str) -> list[str]:
    """Slot names of a template, in reading order."""
    return [part[1:-1] for part in TEMPLATES[template].split() if part.startswith("{")]


def slot_fillings(template: str):
    """Every assignment of content words to the template's slots; subject and object always differ."""
    slots = template_slots(template)
    for words in itertools.product(*(SLOT_WORDS[slot] for slot in slots)):
        filling = dict(zip(slots, words))
        if filling.get("subject") != filling.get("object"):
            yield tuple(sorted(filling.items()))


@cache
def all_sentences() -> tuple[Sentence, ...]:
    """Every sentence of the language, template by template in a fixed order."""
    fillings = ((template, slots) for template in TEMPLATES for slots in slot_fillings(template))
    return tuple(Sentence(index, template, slots) for index, (template, slots) in enumerate(fillings))


@cache
def sentence_by_text() -> dict[str, Sentence]:
    return {sentence.text: sentence for sentence in all_sentences()}


def parse(text: str) -> Sentence:
    """The sentence whose text is `text` (extra spaces and case ignored); KeyError if it is not in the language."""
    return sentence_by_text()[" ".join(text.lower().split())]


@cache
def held_out_ids(seed: int = SPLIT_SEED, fraction: float = HELD_OUT_FRACTION) -> frozenset[int]:
    """Ids of the held-out sentences: `fraction` of every template (rounded up), drawn with `seed`."""
    rng = random.Random(seed)
    held_out = set()
    for template in TEMPLATES:
        ids = [sentence.sentence_id for sentence in all_sentences() if sentence.template == template]
        held_out.update(rng.sample(ids, math.ceil(fraction * len(ids))))
    return frozenset(held_out)


def split_sentences(split: str) -> list[Sentence]:
    """The "train" or "held_out" sentences, in id order."""
    if split not in ("train", "held_out"):
        raise ValueError(f"split must be 'train' or 'held_out', got {split!r}")
    held_out = held_out_ids()
    return [sentence for sentence in all_sentences() if (sentence.sentence_id in held_out) == (split == "held_out")]


def words_of(text: str) -> list[str]:
    """Lower-cased words and punctuation marks of `text`, split as the world's word-level tokenizer splits them."""
    return re.findall(r"\w+|[^\w\s]+", text.lower())


def sentences_by_template(split: str) -> dict[str, list[Sentence]]:
    """The sentences of a split grouped by template, templates in `TEMPLATES` order."""
    groups = {template: [] for template in TEMPLATES}
    for sentence in split_sentences(split):
        groups[sentence.template].append(sentence)
    return groups


def vocabulary() -> dict[str, list[str]]:
    """Every word of both languages and of the instructions, by kind (what the tokenizer must know)."""
    instruction_words = sorted({word for text in INSTRUCTIONS.values() for word in words_of(text)})
    return {
        "content_words": list(CONTENT_WORDS),
        "function_words": list(FUNCTION_WORDS),
        "nalish_words": [NALISH_WORDS[word] for word in CONTENT_WORDS] + list(NALISH_FUNCTION_WORDS),
        "instruction_words": instruction_words,
    }
