"""Splits made from another split's clips: a higher voice (`--pitch_piper`), clips cut tight at the speech, and the
part of `train_extra` whose sentences no other training split speaks.

People's recorded prompts are often cut close to the speech; the corpus's clips all have silence around theirs
(`world.build_speech.record`). A split cut tight (`dev_cut`, `dev_short_cut`) measures what that costs."""

import functools
import itertools
import json
import os
import random
import subprocess

import numpy as np
import soundfile

from processing_blsp import load_audio
from world.build_speech import SAMPLING_RATE, cut_silence, recorded_silences

PITCHED_SPLITS = {"train_piper_pitched": "train_piper", "dev_piper_pitched": "dev_piper"}
"""`--pitch_piper`: each split is its source's clips with the pitch raised (sox's `pitch`): a higher Piper voice."""
PITCH_CENTS = (300, 900)
"""The range a pitched clip's shift is drawn from, in cents: joe's voice (about 110 Hz) towards a woman's (about 200
Hz). sox's `pitch` moves the formants along, as a shorter vocal tract does."""
CUT_SPLITS = {"dev_cut": "dev", "dev_short_cut": "dev_short"}
"""Each split is its source's clips with their recorded silence cut off (`cut_silence`)."""
LONG_SPLITS = {"dev_long": "dev"}
"""Each split's clips are runs of its source's clips in one voice (espeak-ng's voices pooled, as they have too few
clips each), `LONG_GROUP_SIZES` sentences said one after another: prompts as long as the real ones' longest (44
words), where a transcript's end is far from its start."""
LONG_GROUP_SIZES, LONG_PAUSE = (4, 5, 6), 0.3
"""The sentences per long clip, in turn; the pause between two sentences in seconds (the next clip's own recorded
noise)."""
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
    long = [(split, source, write_long_split) for split, source in LONG_SPLITS.items()]
    return pitched + cut + long + [(FRESH_SPLIT, "train_extra", write_fresh_split)]


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


def long_runs(rows: list[dict]) -> list[list[dict]]:
    """`rows` in runs of one voice (espeak-ng's pooled), `LONG_GROUP_SIZES` rows each in turn. A voice's last run may
    be shorter, down to the smallest size; fewer rows left over are not used."""
    by_voice, runs, sizes = {}, [], itertools.cycle(LONG_GROUP_SIZES)
    for row in rows:
        voice = "" if row.get("synthesizer") == "espeak-ng" else row.get("voice", "")
        by_voice.setdefault((row.get("synthesizer"), voice), []).append(row)
    for group in by_voice.values():
        while len(group) >= min(LONG_GROUP_SIZES):
            size = next(sizes)
            runs.append(group[:size])
            group = group[size:]
    return runs


def long_row(run: list[dict]) -> dict:
    """The row of a run's clip (`write_long_split`) but its file: the sentences' text, voice, silences and duration."""
    inner = sum(max(row["leading_silence"] - LONG_PAUSE, 0) for row in run[1:])
    inner += sum(row["trailing_silence"] for row in run[:-1])
    return {
        "text": " ".join(row["text"] for row in run),
        "synthesizer": run[0].get("synthesizer"),
        "voice": run[0].get("voice") if len({row.get("voice") for row in run}) == 1 else "mixed",
        "leading_silence": run[0]["leading_silence"],
        "trailing_silence": run[-1]["trailing_silence"],
        "duration": round(sum(row["duration"] for row in run) - inner, 3),
    }


def write_long_split(source: str, directory: str) -> list[dict]:
    """`source`'s clips joined in `long_runs`: the first clip's leading silence, each sentence's speech, `LONG_PAUSE`
    of the next clip's own silence between two, the last clip's trailing silence. Each row names its `sources`; the
    questions of single sentences are left out."""
    os.makedirs(directory, exist_ok=True)
    long_rows, pause = [], int(LONG_PAUSE * SAMPLING_RATE)
    for run in long_runs(read_rows(source)):
        pieces = []
        for position, row in enumerate(run):
            clip = load_audio(os.path.join(source, row["file_name"]), SAMPLING_RATE)
            lead, tail = recorded_silences(row)
            start = 0 if position == 0 else max(lead - pause, 0)
            pieces.append(clip[start : len(clip) if position == len(run) - 1 else len(clip) - tail])
        clip = np.concatenate(pieces)
        name = f"{len(long_rows):05d}.flac"
        soundfile.write(os.path.join(directory, name), clip, SAMPLING_RATE, subtype="PCM_16")
        row = {"file_name": name, **long_row(run), "sources": [row["file_name"] for row in run]}
        long_rows.append({**row, "duration": round(len(clip) / SAMPLING_RATE, 3)})
    return write_rows(directory, long_rows)


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
