"""The English corpus plan (`english.build_corpus`): held-out sentences stay out of training, and adding extra
training sentences changes no other split's clips."""

import pytest

from english.build_corpus import QUESTION, clip_plan, question_for, wordnet_sentences

ANIMALS = ["dog", "cat", "horse", "sheep", "goat", "duck"]
PLACES = [
    f"{size} {kind}" for size in ("old", "new", "long", "quiet", "dark") for kind in ("barn", "mill", "shed", "hall")
]


@pytest.fixture
def wordnet_dir(tmp_path):
    """A WordNet data file (`data.noun`) in WordNet's format: synset fields, then `|` gloss; "examples"."""
    examples = [f'"the {animal} walked slowly across the {place} field"' for animal, place in zip(ANIMALS, PLACES)]
    examples += [f'"we carried the heavy boxes up to the {place} today"' for place in PLACES]
    examples += ['"we met the tall man called Alice today"', '"too short to keep"', '"we counted 42 sheep in the barn"']
    lines = ["  license header line\n"]
    lines += [f"{index:08d} 05 n 01 thing 0 000 | a thing; {example}\n" for index, example in enumerate(examples)]
    (tmp_path / "data.noun").write_text("".join(lines), encoding="latin-1")
    return str(tmp_path)


def test_sentences_are_plain(wordnet_dir):
    sentences = wordnet_sentences(wordnet_dir)
    assert len(sentences) == len(ANIMALS) + len(PLACES)  # not a name, 4 words or a digit
    assert question_for("the dog walked slowly across the wide field") == (QUESTION.format(category="animal"), "dog")
    assert question_for("we carried the boxes up the stairs") is None


def test_extra_training_sentences_change_no_other_split(wordnet_dir):
    plan = clip_plan(num_train=10, num_test=4, seed=0, wordnet_dir=wordnet_dir)
    more = clip_plan(num_train=10, num_test=4, seed=0, num_extra_train=12, wordnet_dir=wordnet_dir)
    assert plan.pop("train_extra") == []
    extra = more.pop("train_extra")
    assert more == plan
    assert len(extra) == 12 and all(row["synthesizer"] in ("espeak-ng", "festival") for row in extra)
    test = {row["text"] for split, rows in plan.items() if split.startswith("test") for row in rows}
    train = {row["text"] for row in plan["train"]}
    assert len(test) == 4 and not test & train and not {row["text"] for row in extra} & (test | train)
    with pytest.raises(ValueError, match="extra training sentences"):
        clip_plan(num_train=10, num_test=4, seed=0, num_extra_train=13, wordnet_dir=wordnet_dir)
