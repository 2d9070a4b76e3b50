"""Real speech for tests: espeak-ng speaks sentences, sox writes 16 kHz mono FLAC."""

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


def speech_tools_available() -> bool:
    return shutil.which("espeak-ng") is not None and shutil.which("sox") is not None


def synthesize(text: str, path: str, voice: str = "en-us", speed: int = 160) -> str:
    """Speak `text` into `path` (any extension sox writes; FLAC here) at 16 kHz mono."""
    wav = path + ".tmp.wav"
    subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", wav, text], check=True)
    subprocess.run(["sox", wav, "-r", "16000", "-c", "1", path], check=True)
    os.remove(wav)
    return path


def build_speech_corpus(directory: str, count: int = 8) -> list[dict]:
    """`count` FLAC clips (cycling through sentences and voices); returns rows of file_name and text."""
    os.makedirs(directory, exist_ok=True)
    rows = []
    for index in range(count):
        text = SENTENCES[index % len(SENTENCES)]
        file_name = f"clip_{index:03d}.flac"
        synthesize(text, os.path.join(directory, file_name), voice=VOICES[index % len(VOICES)])
        rows.append({"file_name": file_name, "text": text})
    return rows
