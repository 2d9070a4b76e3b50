"""Splits made from another split's clips: a higher voice (`--pitch_piper`), clips cut tight at the speech, and the
part of `train_extra` whose sentences no other training split speaks.

People's recorded prompts are often cut close to the speech; the corpus's clips all have silence around theirs
(`world.build_speech.record`). A split cut tight (`dev_cut`, `dev_short_cut`) measures what that costs."""

import functools
import json
import os
import random
import subprocess

import soundfile

from processing_blsp import load_audio
from world.build_speech import SAMPLING_RATE, cut_silence

PITCHED_SPLITS = {"train_piper_pitched": "train_piper", "dev_piper_pitched": "dev_piper"}
"""`--pitch_piper`: each split is its source's clips with the pitch raised (sox's `pitch`): a higher Piper voice."""
PITCH_CENTS = (300, 900)
"""The range a pitched clip's shift is drawn from, in cents: joe's voice (about 110 Hz) towards a woman's (about 200
Hz). sox's `pitch` moves the formants along, as a shorter vocal tract does."""
CUT_SPLITS = {"dev_cut": "dev", "dev_short_cut": "dev_short"}
"""Each split is its source's clips with their recorded silence cut off (`cut_silence`)."""
FRESH_SPLIT, FRESH_ROWS = "train_fresh", (6000, 12000)
"""`train_fresh`: `train_extra`'s rows 6,000-11,999, the sentences no other training split speaks when the corpus is
built as english/README.md says (`train_flite` takes the first 6,000, `train_short`'s spans the last 3,000 and
`train_kokoro` the last 2,000), so that a mixture can draw new text without the rest of `train_extra`."""


def derived_splits(pitch_piper: bool, seed: int) -> list[tuple]:
    """(split, source split, writer(source directory, directory) -> rows) of every derived split asked for."""
    pitched = [
        (split, source, functools.partial(write_pitched_split, seed=seed + 8 + position))
        for position, (split, source) in enumerate(PITCHED_SPLITS.items() if pitch_piper else [])
    ]
    cut = [(split, source, write_cut_split) for split, source in CUT_SPLITS.items()]
    return pitched + cut + [(FRESH_SPLIT, "train_extra", write_fresh_split)]


def read_rows(source: str, hint: str = "") -> list[dict]:
    """`source`'s metadata rows; a missing split says to build it first."""
    metadata = os.path.join(source, "metadata.jsonl")
    if not os.path.exists(metadata):
        raise FileNotFoundError(f"{metadata} is missing: build {os.path.basename(source)} first{hint}")
    with open(metadata, encoding="utf-8") as file:
        return [json.loads(line) for line in file]


def write_rows(directory: str, rows: list[dict]) -> list[dict]:
    """`rows` as the split's `metadata.jsonl`."""
    with open(os.path.join(directory, "metadata.jsonl"), "w", encoding="utf-8") as file:
        file.writelines(json.dumps(row) + "\n" for row in rows)
    return rows


def write_pitched_split(source: str, directory: str, seed: int) -> list[dict]:
    """`source`'s clips with their pitch raised by a drawn `PITCH_CENTS` shift (recorded in each row's `pitch_cents`),
    the tempo and everything else kept."""
    rows = read_rows(source, " (--num_piper_train)")
    rng = random.Random(seed)
    os.makedirs(directory, exist_ok=True)
    for row in rows:
        row["pitch_cents"] = rng.randint(*PITCH_CENTS)
        output = os.path.join(directory, row["file_name"])
        command = ["sox", os.path.join(source, row["file_name"]), output, "pitch", str(row["pitch_cents"])]
        subprocess.run(command, check=True, capture_output=True)
        row["duration"] = round(soundfile.info(output).duration, 3)
    return write_rows(directory, rows)


def write_cut_split(source: str, directory: str) -> list[dict]:
    """`source`'s clips without the silence recorded around their speech (`cut_silence`); the rows then say no silence
    and the new duration."""
    rows = read_rows(source)
    os.makedirs(directory, exist_ok=True)
    for row in rows:
        clip = cut_silence(load_audio(os.path.join(source, row["file_name"]), SAMPLING_RATE), row)
        soundfile.write(os.path.join(directory, row["file_name"]), clip, SAMPLING_RATE, subtype="PCM_16")
        row.update(leading_silence=0.0, trailing_silence=0.0, duration=round(len(clip) / SAMPLING_RATE, 3))
    return write_rows(directory, rows)


def write_fresh_split(source: str, directory: str) -> list[dict]:
    """`source`'s rows `FRESH_ROWS`, their clips linked, not copied. Refused if a training split beside `source` speaks
    one of their sentences (built with other sizes than the README's), or if `source` has too few rows."""
    rows = read_rows(source)[slice(*FRESH_ROWS)]
    if len(rows) < FRESH_ROWS[1] - FRESH_ROWS[0]:
        raise ValueError(f"{source} has fewer than {FRESH_ROWS[1]} rows: build it with --num_extra_train 16000")
    texts, parent = {row["text"] for row in rows}, os.path.dirname(os.path.abspath(source))
    for split in sorted(os.listdir(parent)):
        metadata = os.path.join(parent, split, "metadata.jsonl")
        if (
            split.startswith("train")
            and split not in (FRESH_SPLIT, os.path.basename(source))
            and os.path.exists(metadata)
        ):
            said = texts & {row["text"] for row in read_rows(os.path.join(parent, split))}
            if said:
                raise ValueError(
                    f"{split} speaks {len(said)} of {FRESH_SPLIT}'s sentences ({sorted(said)[0]!r}): build it with the "
                    "sizes english/README.md gives, or leave it out of the mixture"
                )
    os.makedirs(directory, exist_ok=True)
    for row in rows:
        os.link(os.path.join(source, row["file_name"]), os.path.join(directory, row["file_name"]))
    return write_rows(directory, rows)
