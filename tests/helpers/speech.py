"""Real speech for tests: committed 16 kHz mono FLAC clips of English sentences, and the script that made them.

    python -m tests.helpers.speech    # rewrite tests/data/speech/ with espeak-ng and sox (not needed to run the tests)

The tests read the committed clips, so they need neither espeak-ng nor sox; `synthesize` stays for the benchmarks.
"""

import json
import os
import shutil
import subprocess

SENTENCES = [
    "the quick brown fox jumps over the lazy dog",
    "a cat sat on the mat and looked at the bird",
    "please bring me a cup of tea",
    "the weather is nice today",
    "we will meet at the station at noon",
    "she reads a book every evening",
    "the children play in the park",
    "he bought fresh bread at the market",
]
VOICES = ["en-us", "en-gb", "en-us+f3", "en-gb-scotland"]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLIPS_DIR = os.path.join(ROOT, "tests", "data", "speech")
METADATA = "metadata.jsonl"


def synthesize(text: str, path: str, voice: str = "en-us", speed: int = 160) -> str:
    """Speak `text` into `path` (any extension sox writes; FLAC here) at 16 kHz mono."""
    wav = path + ".tmp.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", wav, text], check=True)
    subprocess.run(["sox", wav, "-r", "16000", "-c", "1", path], check=True)
    os.remove(wav)
    return path


def build_speech_corpus(directory: str, count: int = 8) -> list[dict]:
    """`count` FLAC clips (cycling sentences and voices) and a metadata.jsonl; returns rows of file_name, text."""
    os.makedirs(directory, exist_ok=True)
    rows = []
    for index in range(count):
        text = SENTENCES[index % len(SENTENCES)]
        file_name = f"clip_{index:03d}.flac"
        synthesize(text, os.path.join(directory, file_name), voice=VOICES[index % len(VOICES)])
        rows.append({"file_name": file_name, "text": text})
    with open(os.path.join(directory, METADATA), "w", encoding="utf-8") as file:
        file.writelines(json.dumps(row) + "\n" for row in rows)
    return rows


def copy_speech_corpus(directory: str) -> list[dict]:
    """Copy the committed clips into `directory` (tests may add files next to them); returns rows of file_name, text."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(CLIPS_DIR, METADATA), encoding="utf-8") as file:
        rows = [json.loads(line) for line in file]
    for row in rows:
        shutil.copy(os.path.join(CLIPS_DIR, row["file_name"]), os.path.join(directory, row["file_name"]))
    return rows


if __name__ == "__main__":
    shutil.rmtree(CLIPS_DIR, ignore_errors=True)
    print(f"{len(build_speech_corpus(CLIPS_DIR))} clips in {CLIPS_DIR}")


WORLD_TRAIN_CLIPS = os.path.join(ROOT, "world", "data", "speech", "train")


def shipped_clips(count: int = 8) -> list[dict]:
    """The first `count` clips of the world's train split: file_name, text and the file's bytes (from its metadata)."""
    with open(os.path.join(WORLD_TRAIN_CLIPS, "metadata.jsonl")) as file:
        rows = [json.loads(line) for line in file][:count]
    for row in rows:
        with open(os.path.join(WORLD_TRAIN_CLIPS, row["file_name"]), "rb") as clip:
            row["bytes"] = clip.read()
    return rows
