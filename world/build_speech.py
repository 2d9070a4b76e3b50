"""Speak the toy language with espeak-ng: an audiofolder per split (16 kHz mono 8-bit FLAC plus `metadata.jsonl`).

    python -m world.build_speech --output_dir world/data/speech

- `train`: train sentences in many training voices (accent + voice variant) and speeds;
- `test_seen_voice`: held-out sentences in training voices and speeds;
- `test_heldout_voice`: the same held-out sentences in one voice and speed that no training clip uses.

Each `metadata.jsonl` row holds `file_name`, `text`, `voice`, `speed` (espeak-ng words per minute) and
`sentence_id` (see `world.language`). Clips are trimmed to the speech plus a short margin, peak-normalised and stored
with 8-bit samples, which keeps the shipped audio small.
"""

import argparse
import io
import json
import os
import random
import shutil
import subprocess
from collections import defaultdict

import numpy as np
import soundfile
import soxr

from world.language import Sentence, sentences_by_template, split_sentences

SAMPLING_RATE = 16000
TRAIN_ACCENTS = (
    "en-us", "en-gb", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029", "en-us-nyc",
)  # fmt: skip
TRAIN_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "Alex", "Andy", "Gene", "Mike", "Storm", "Diogo", "Hugo",
    "antonio", "david", "ed", "edward", "grandpa", "iven", "john", "klatt", "klatt2", "klatt3", "max", "michel", "paul",
    "pedro", "quincy", "rob", "robert", "sandro", "travis", "victor",
    "f1", "f3", "f4", "f5", "Alicia", "Andrea", "Annie", "anika", "aunty", "belinda", "grandma", "linda", "shelby",
    "steph",
)  # fmt: skip
TRAIN_SPEEDS = (120, 130, 140, 150, 160, 180, 190, 200)
HELD_OUT_VOICE, HELD_OUT_SPEED = "en-us+f2", 170
SILENCE_THRESHOLD = 0.02
"""Fraction of the peak amplitude below which leading and trailing samples count as silence."""
SILENCE_MARGIN_SECONDS = 0.08
PEAK_LEVEL = 0.9


def training_voices() -> list[str]:
    """Every accent + variant combination used for training clips (`espeak-ng -v` names)."""
    return [f"{accent}+{variant}" for accent in TRAIN_ACCENTS for variant in TRAIN_VARIANTS]


def speak(text: str, voice: str, speed: int) -> np.ndarray:
    """espeak-ng's rendering of `text` as float32 mono samples at 16 kHz."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout", text], check=True, capture_output=True
    ).stdout
    samples, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    return soxr.resample(samples, rate, SAMPLING_RATE).astype(np.float32)


def trim_and_normalize(samples: np.ndarray) -> np.ndarray:
    """Cut leading and trailing silence (keeping a short margin) and scale the peak to `PEAK_LEVEL`."""
    peak = np.abs(samples).max()
    loud = np.flatnonzero(np.abs(samples) > SILENCE_THRESHOLD * peak)
    margin = int(SILENCE_MARGIN_SECONDS * SAMPLING_RATE)
    start, end = max(0, loud[0] - margin), min(len(samples), loud[-1] + margin)
    return samples[start:end] * (PEAK_LEVEL / peak)


def pick_sentences(sentences: list[Sentence], count: int, rng: random.Random) -> list[Sentence]:
    """`count` distinct sentences, taken in turn from each template so that rare templates are all represented."""
    by_template = defaultdict(list)
    for sentence in sentences:
        by_template[sentence.template].append(sentence)
    queues = [rng.sample(group, len(group)) for group in by_template.values()]
    picked = []
    while len(picked) < count and any(queues):
        picked.extend(queue.pop() for queue in queues if queue)
    if len(picked) < count:
        raise ValueError(f"asked for {count} sentences but only {len(sentences)} exist")
    return picked[:count]


def clip_plan(num_train: int, num_test: int, seed: int) -> dict[str, list[dict]]:
    """For every split, the metadata rows of its clips (file name, text, voice, speed, sentence id)."""
    rng = random.Random(seed)
    voices = training_voices()
    train = pick_sentences(split_sentences("train"), num_train, rng)
    test = pick_sentences(split_sentences("held_out"), num_test, rng)
    plans = {
        "train": [(sentence, rng.choice(voices), rng.choice(TRAIN_SPEEDS)) for sentence in train],
        "test_seen_voice": [(sentence, rng.choice(voices), rng.choice(TRAIN_SPEEDS)) for sentence in test],
        "test_heldout_voice": [(sentence, HELD_OUT_VOICE, HELD_OUT_SPEED) for sentence in test],
    }
    return {split: [clip_row(index, *clip) for index, clip in enumerate(plan)] for split, plan in plans.items()}


def clip_row(index: int, sentence: Sentence, voice: str, speed: int) -> dict:
    """The metadata row of one clip."""
    return {
        "file_name": f"{index:04d}.flac",
        "text": sentence.text,
        "voice": voice,
        "speed": speed,
        "sentence_id": sentence.sentence_id,
    }


def pretraining_plan(num_clips: int, seed: int) -> list[dict]:
    """Rows of a speech-pretraining corpus: random train sentences (templates drawn uniformly) in training voices."""
    rng = random.Random(seed)
    by_template = sentences_by_template("train")
    rows = []
    for index in range(num_clips):
        sentence = rng.choice(by_template[rng.choice(sorted(by_template))])
        voice, speed = rng.choice(training_voices()), rng.choice(TRAIN_SPEEDS)
        rows.append(clip_row(index, sentence, voice, speed))
    return rows


def write_split(directory: str, rows: list[dict]):
    """Speak every row into `directory` and write its `metadata.jsonl`."""
    os.makedirs(directory, exist_ok=True)
    for row in rows:
        samples = trim_and_normalize(speak(row["text"], row["voice"], row["speed"]))
        soundfile.write(os.path.join(directory, row["file_name"]), samples, SAMPLING_RATE, subtype="PCM_S8")
    with open(os.path.join(directory, "metadata.jsonl"), "w") as file:
        file.writelines(json.dumps(row) + "\n" for row in rows)


def build_speech(output_dir: str, num_train: int = 1000, num_test: int = 150, seed: int = 0) -> dict[str, list[dict]]:
    """Write every split under `output_dir` (replacing what was there); returns the rows of each split."""
    shutil.rmtree(output_dir, ignore_errors=True)
    plan = clip_plan(num_train, num_test, seed)
    for split, rows in plan.items():
        write_split(os.path.join(output_dir, split), rows)
    return plan


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="world/data/speech")
    parser.add_argument("--num_train", type=int, default=1000, help="Training clips (distinct train sentences).")
    parser.add_argument("--num_test", type=int, default=150, help="Held-out sentences, spoken once per test split.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    plan = build_speech(args.output_dir, args.num_train, args.num_test, args.seed)
    print({split: len(rows) for split, rows in plan.items()})


if __name__ == "__main__":
    main()
