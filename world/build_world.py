"""Build the whole miniature world with fixed seeds and record it in `world/manifest.json`.

    python -m world.build_world

1. `world.build_speech`: recorded-like espeak-ng and festival clips of the toy language, one audiofolder per split
   in `world/data/speech`;
2. `world.pretrain_llm`: the word-level chat LLM in `world/models/llm` (`--keep_llm` keeps the one already there and
   its manifest entry, for rebuilding only the speech);
3. `world.pretrain_speech`: the tiny Whisper (CTC-pretrained encoder) in `world/models/speech`, trained on a clean
   corpus of train sentences in training voices that is spoken for it and not shipped, recorded afresh as it reads;
4. the manifest: vocabularies, splits, voices and speeds, clip counts, file sizes and hashes, training settings and
   the measured quality (LLM task accuracies, CTC word error rate per split). `tests/test_world.py` checks the shipped
   files against it.
"""

import argparse
import hashlib
import json
import os
import tempfile
import time
from collections import Counter

import soundfile

from world import build_speech, language, pretrain_llm, pretrain_speech
from world.cascade import LLM_DIR, SPEECH_MODEL_DIR, WORLD_DIR

SPEECH_DIR = os.path.join(WORLD_DIR, "data", "speech")
MANIFEST = os.path.join(WORLD_DIR, "manifest.json")


def sha256_of_files(paths: list[str]) -> str:
    """One SHA-256 over the names and contents of `paths`, in the given order."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(os.path.basename(path).encode())
        with open(path, "rb") as file:
            digest.update(file.read())
    return digest.hexdigest()


def file_records(directory: str) -> dict[str, dict]:
    """Size and SHA-256 of every file of a model directory."""
    return {
        name: {"bytes": os.path.getsize(path), "sha256": sha256_of_files([path])}
        for name in sorted(os.listdir(directory))
        for path in [os.path.join(directory, name)]
    }


def split_record(directory: str) -> dict:
    """What a speech split holds: clip count, sentences, voices, speeds, bytes and one hash over all its files."""
    rows = pretrain_speech.read_split(directory)
    paths = [os.path.join(directory, "metadata.jsonl")] + [os.path.join(directory, row["file_name"]) for row in rows]
    return {
        "clips": len(rows),
        "sentences": len({row["sentence_id"] for row in rows}),
        "templates": dict(Counter(language.parse(row["text"]).template for row in rows)),
        "synthesizers": dict(Counter(row["synthesizer"] for row in rows)),
        "voices": sorted({row["voice"] for row in rows}),
        "speeds": sorted({row["speed"] for row in rows}),
        "seconds": round(sum(soundfile.info(path).duration for path in paths[1:]), 1),
        "bytes": sum(os.path.getsize(path) for path in paths),
        "sha256": sha256_of_files(paths),
    }


def pretraining_record(rows: list[dict], seed: int) -> dict:
    """What the unshipped speech-pretraining corpus holds (rebuilt from `build_speech.pretraining_plan`)."""
    return {
        "clips": len(rows),
        "seed": seed,
        "sentences": len({row["sentence_id"] for row in rows}),
        "voices": len({row["voice"] for row in rows}),
        "speeds": sorted({row["speed"] for row in rows}),
        "rows_sha256": hashlib.sha256(json.dumps(rows).encode()).hexdigest(),
    }


def language_record() -> dict:
    """The language's vocabularies, templates, instructions and sentence split."""
    held_out = sorted(language.held_out_ids())
    return {
        "vocabulary": language.vocabulary(),
        "nalish_lexicon": language.NALISH_WORDS,
        "templates": language.TEMPLATES,
        "instructions": language.INSTRUCTIONS,
        "sentences": {
            "all": len(language.all_sentences()),
            "train": len(language.split_sentences("train")),
            "held_out": len(held_out),
        },
        "held_out_ids_sha256": hashlib.sha256(json.dumps(held_out).encode()).hexdigest(),
        "split_seed": language.SPLIT_SEED,
    }


def timed(function, *args) -> tuple:
    start = time.time()
    result = function(*args)
    return result, round(time.time() - start, 1)


def kept_llm_record() -> tuple[dict, float]:
    """The LLM's manifest entry and build time from the current manifest, after checking its files are unchanged."""
    with open(MANIFEST) as file:
        manifest = json.load(file)
    if file_records(LLM_DIR) != manifest["llm"]["files"]:
        raise ValueError(f"--keep_llm: the files in {LLM_DIR} differ from {MANIFEST}; rebuild without --keep_llm")
    record = {key: value for key, value in language.current_task_names(manifest["llm"]).items() if key != "files"}
    return record, manifest["build_seconds"]["llm"]


def build_world(args: argparse.Namespace) -> dict:
    """Run every step and return the manifest."""
    speech_plan, speech_seconds = timed(
        build_speech.build_speech, SPEECH_DIR, args.num_train_clips, args.num_test_clips, args.seed
    )
    threads = ["--threads", str(args.threads), "--seed", str(args.seed)]
    if args.keep_llm:
        llm, llm_seconds = kept_llm_record()
    else:
        llm_args = pretrain_llm.argument_parser().parse_args(["--output_dir", LLM_DIR, *threads])
        llm, llm_seconds = timed(pretrain_llm.pretrain_llm, llm_args)
    with tempfile.TemporaryDirectory() as pretraining_dir:
        pretraining_rows = build_speech.pretraining_plan(args.num_pretraining_clips, args.seed + 1)
        _, pretraining_speech_seconds = timed(build_speech.write_split, pretraining_dir, pretraining_rows)
        speech_args = pretrain_speech.argument_parser().parse_args(
            ["--speech_dir", SPEECH_DIR, "--output_dir", SPEECH_MODEL_DIR, "--train_dirs", pretraining_dir] + threads
        )
        speech_model, speech_model_seconds = timed(pretrain_speech.pretrain_speech, speech_args)
    return {
        "language": language_record(),
        "speech": {
            "held_out_voice": build_speech.HELD_OUT_VOICE,
            "held_out_speed": build_speech.HELD_OUT_SPEED,
            "held_out_festival_voice": build_speech.HELD_OUT_FESTIVAL_VOICE,
            "training_voices": len(build_speech.training_voices()),
            "festival_training_voices": list(build_speech.FESTIVAL_TRAIN_VOICES),
            "festival_share": build_speech.FESTIVAL_SHARE,
            "training_speeds": list(build_speech.TRAIN_SPEEDS),
            "recording": {**build_speech.RECORDING, "noise": sorted(build_speech.NOISE_EXPONENTS)},
            "splits": {split: split_record(os.path.join(SPEECH_DIR, split)) for split in speech_plan},
            "pretraining_corpus": pretraining_record(pretraining_rows, args.seed + 1),
        },
        "llm": {**llm, "files": file_records(LLM_DIR)},
        "speech_model": {**speech_model, "files": file_records(SPEECH_MODEL_DIR)},
        "build_seconds": {
            "speech": round(speech_seconds + pretraining_speech_seconds, 1),
            "llm": llm_seconds,
            "speech_model": speech_model_seconds,
            "threads": args.threads,
        },
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_train_clips", type=int, default=1000)
    parser.add_argument("--num_test_clips", type=int, default=150)
    parser.add_argument("--num_pretraining_clips", type=int, default=6000, help="Unshipped clips for the speech model.")
    parser.add_argument("--keep_llm", action="store_true", help="Keep the LLM already built (only the speech changed).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch (at most the free cores).")
    manifest = build_world(parser.parse_args())
    with open(MANIFEST, "w") as file:
        json.dump(manifest, file, indent=2)
        file.write("\n")
    print(json.dumps(manifest["build_seconds"], indent=2))


if __name__ == "__main__":
    main()
