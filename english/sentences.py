"""The English corpus's text: WordNet's example sentences, filtered and split, and the one-word category questions
that held-out and dev sentences carry ("Which animal is mentioned? Answer with one word."); more training text from
step 1's continuations and from Debian's fortune cookies."""

import glob
import os
import random
import re

WORDNET_DIR = "/usr/share/wordnet"
FORTUNES_DIR = "/usr/share/games/fortunes"
MIN_WORDS, MAX_WORDS = 6, 14
LLM_MIN_WORDS, LLM_MAX_WORDS = 4, 16
CATEGORIES = {
    "colour": "red orange yellow green blue purple pink brown black white gray grey",
    "animal": "dog dogs cat cats horse horses cow cows bird birds fish sheep pig pigs lion tiger bear wolf fox mouse "
    "rabbit duck ducks chicken chickens snake monkey elephant deer goat bees bee",
    "number": "two three four five six seven eight nine ten eleven twelve twenty thirty forty fifty hundred thousand",
    "body part": "hand hands head eyes eye arm arms leg legs foot feet nose mouth ear ears finger fingers knee "
    "shoulder heart teeth tooth hair back neck",
    "family member": "mother father brother sister son daughter wife husband uncle aunt grandmother grandfather cousin",
    "day of the week": "monday tuesday wednesday thursday friday saturday sunday",
    "month": "january february march april june july august september october november december",
    "season": "spring summer autumn winter",
}
"""Words whose category a question can ask for ("Which colour is mentioned..."); case-insensitive."""
QUESTION = "Which {category} is mentioned? Answer with one word."
WORD_RE = re.compile(r"[a-z][a-z'-]*")
PLAIN_RE = re.compile(r"[A-Za-z][A-Za-z ,'-]*[.!?]?")


def wordnet_sentences(wordnet_dir: str = WORDNET_DIR) -> list[str]:
    """WordNet's plain example sentences of 6-14 words, deduplicated case-insensitively, sorted."""
    return sorted(wordnet_examples(wordnet_dir, is_plain).values())


def wordnet_phrases(wordnet_dir: str = WORDNET_DIR) -> list[str]:
    """WordNet's other examples that are speakable text: phrases of 2-5 words, and sentences of 6-14 words that name
    someone or something (a capitalised word past the first: names, days, months). None is, in any case, a plain
    sentence (`wordnet_sentences`: the dev and test sentences among them), so they add new text to training only."""
    plain = wordnet_examples(wordnet_dir, is_plain)
    return sorted(text for key, text in wordnet_examples(wordnet_dir, is_phrase).items() if key not in plain)


def wordnet_examples(wordnet_dir: str, keep) -> dict[str, str]:
    """WordNet's example sentences for which `keep(sentence)`, keyed by their lowercase (the first spelling kept)."""
    paths = sorted(glob.glob(os.path.join(wordnet_dir, "data.*")))
    if not paths:
        raise FileNotFoundError(f"no WordNet data files in {wordnet_dir}: apt-get install wordnet-base")
    found = {}
    for path in paths:
        with open(path, encoding="latin-1") as file:
            for line in file:
                if line.startswith("  ") or "|" not in line:
                    continue
                for example in re.findall(r'"([^"]+)"', line.split("|", 1)[1]):
                    sentence = " ".join(example.split())
                    if keep(sentence):
                        found.setdefault(sentence.lower(), sentence)
    return found


def continuation_sentences(directories: list[str], exclude: set[str] = frozenset()) -> list[str]:
    """The speakable sentences of step 1's continuations (the output directories of `generate_continuations.py`):
    each continuation split after `.`, `!` and `?`, sentences of 4-16 words of letters, commas, apostrophes and
    hyphens, deduplicated case-insensitively, sorted. Those whose `sentence_key` is in `exclude` are left out (the
    held-out transcripts: an LLM may write one of them word for word)."""
    import pyarrow.parquet

    found = {}
    for directory in directories:
        paths = sorted(glob.glob(os.path.join(directory, "data", "*.parquet")))
        if not paths:
            raise FileNotFoundError(f"no continuations in {directory}/data: run generate_continuations.py first")
        for path in paths:
            for continuation in pyarrow.parquet.read_table(path, columns=["continuation"]).column(0).to_pylist():
                for sentence in speakable_sentences(" ".join(continuation.split()), LLM_MIN_WORDS, LLM_MAX_WORDS):
                    found.setdefault(sentence_key(sentence), sentence)
    return sorted(sentence for key, sentence in found.items() if key not in exclude)


def fortune_sentences(fortunes_dir: str = FORTUNES_DIR) -> list[str]:
    """The sentences of Debian's fortune cookies (`apt-get install fortunes`): sayings, jokes and advice ("If you fall
    in a pond, check your pockets for fish."), everyday English of another kind than WordNet's examples. Each cookie's
    lines are joined (its `--` attribution left out) and split after `.`, `!` and `?`; sentences of 6-14 words of
    letters, commas, apostrophes and hyphens are kept when they start with a capital and no word is in capitals
    (headlines, acronyms), deduplicated case-insensitively, sorted."""
    paths = sorted(path for path in glob.glob(os.path.join(fortunes_dir, "*")) if "." not in os.path.basename(path))
    if not paths:
        raise FileNotFoundError(f"no fortune files in {fortunes_dir}: apt-get install fortunes")
    found = {}
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as file:
            cookies = re.split(r"^%$", file.read(), flags=re.MULTILINE)
        for cookie in cookies:
            lines = [line.strip() for line in cookie.splitlines() if line.strip() and not line.strip().startswith("--")]
            for sentence in speakable_sentences(" ".join(lines), MIN_WORDS, MAX_WORDS):
                if sentence[0].isupper() and not any(len(word) > 1 and word.isupper() for word in sentence.split()):
                    found.setdefault(sentence_key(sentence), sentence)
    return sorted(found.values())


def speakable_sentences(text: str, min_words: int, max_words: int) -> list[str]:
    """`text` split after `.`, `!` and `?`, the sentences of `min_words`-`max_words` words of letters, commas,
    apostrophes and hyphens kept (no `--`)."""
    sentences = re.split(r"(?<=[.!?])\s+", text)
    return [
        sentence
        for sentence in sentences
        if min_words <= len(sentence.split()) <= max_words and PLAIN_RE.fullmatch(sentence) and "--" not in sentence
    ]


def sentence_key(sentence: str) -> str:
    """A sentence's words, lowercased, without punctuation: what two transcripts share when they say the same."""
    return " ".join(WORD_RE.findall(sentence.lower()))


def is_plain(sentence: str) -> bool:
    """Letters, commas, apostrophes and hyphens, 6-14 words, no capitalised word but the first (and "I")."""
    words = sentence.split()
    if not MIN_WORDS <= len(words) <= MAX_WORDS or not PLAIN_RE.fullmatch(sentence) or "--" in sentence:
        return False
    return all(word == "I" or not word[0].isupper() or index == 0 for index, word in enumerate(words))


def is_phrase(sentence: str) -> bool:
    """Letters, commas, apostrophes and hyphens, 2-14 words, and not `is_plain` (shorter, or naming someone)."""
    words = sentence.split()
    if not 2 <= len(words) <= MAX_WORDS or not PLAIN_RE.fullmatch(sentence) or "--" in sentence:
        return False
    return not is_plain(sentence)


def question_for(sentence: str) -> tuple[str, str] | None:
    """(question, answer) when the sentence names exactly one category word, else None."""
    words = WORD_RE.findall(sentence.lower())
    hits = [(category, word) for word in words for category, members in CATEGORIES.items() if word in members.split()]
    if len(hits) != 1:
        return None
    category, word = hits[0]
    return QUESTION.format(category=category), word


def question_category(question: str) -> str:
    """The category a `QUESTION` asks for ("animal" of "Which animal is mentioned? Answer with one word.")."""
    match = re.fullmatch(re.escape(QUESTION).replace(re.escape("{category}"), "(.+)"), question)
    if not match:
        raise ValueError(f"{question!r} is not a question of the form {QUESTION!r}")
    return match.group(1)


def question_fields(sentence: str) -> dict[str, str]:
    """A row's `question` and `answer` fields when the sentence names one category word (`question_for`), else none."""
    qa = question_for(sentence)
    return {"question": qa[0], "answer": qa[1]} if qa else {}


def split_sentences(sentences: list[str], num_train: int, num_test: int, seed: int) -> tuple[list, list]:
    """Held-out sentences (each with a question) and training sentences, disjoint, drawn with `seed`.

    The training sentences are all the others, in drawn order; the first `num_train` are `train`'s."""
    shuffled = random.Random(seed).sample(sentences, len(sentences))
    test, rest = [], []
    for sentence in shuffled:
        fields = question_fields(sentence)
        if fields and len(test) < num_test:
            test.append({"text": sentence, **fields})
        else:
            rest.append({"text": sentence})
    if len(test) < num_test or len(rest) < num_train:
        raise ValueError(
            f"asked for {num_train} train and {num_test} held-out sentences, found {len(rest)} and {len(test)}"
        )
    return rest, test
