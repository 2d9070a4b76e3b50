"""The real-speech split: the recorded prompts of Debian's `asterisk-core-sounds-en-wav` (one professional speaker,
8 kHz telephone recordings, CC-BY-SA-3.0) with the transcripts of `asterisk-core-sounds-en`, resampled to 16 kHz.
For evaluation only: no training split is built from them."""

import gzip
import json
import os
import re

import soundfile

from english.derived import write_rows
from english.sentences import question_fields
from processing_blsp import load_audio
from world.build_speech import SAMPLING_RATE

REAL_SPEECH_SPLIT = "test_real_speech"
ASTERISK_SOUNDS = "/usr/share/asterisk/sounds/en"
ASTERISK_TRANSCRIPTS = "/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
MAX_CLIP_SECONDS = 30.0
"""Whisper's window: longer prompts are left out of the real-speech split (and counted)."""


def clean_prompt_transcript(text: str) -> str:
    """An asterisk prompt's transcript as spoken: annotations in brackets, parentheses or angles dropped, `#` and `*`
    read as the speaker reads them ("pound", "star")."""
    text = re.sub(r"\[[^\]]*\]|\([^)]*\)|<[^>]*>", " ", text)
    text = " ".join(text.replace("#", " pound ").replace("*", " star ").split())
    return re.sub(r" ([,.?!;:])", r"\1", text)


def real_speech_rows(
    sounds_dir: str = ASTERISK_SOUNDS, transcripts: str = ASTERISK_TRANSCRIPTS
) -> tuple[list[dict], dict[str, str]]:
    """The asterisk prompts with a spoken transcript (rows: `file_name`, `source`, `text`, `duration`, and `question`
    and `answer` where the prompt names one category word), and the prompts left out with the reason."""
    if not os.path.isdir(sounds_dir) or not os.path.exists(transcripts):
        raise FileNotFoundError(
            f"no asterisk prompts in {sounds_dir} or no transcripts in {transcripts}: "
            "apt-get install -y asterisk-core-sounds-en-wav asterisk-core-sounds-en"
        )
    rows, left_out = [], {}
    for name, text in prompt_transcripts(transcripts).items():
        path = os.path.join(sounds_dir, name + ".wav")
        if name.startswith("silence/") or not re.search("[A-Za-z0-9]", text):
            left_out[name] = "no speech (a tone or silence)"
        elif not os.path.exists(path):
            left_out[name] = "no recording"
        elif soundfile.info(path).duration > MAX_CLIP_SECONDS:
            left_out[name] = f"longer than {MAX_CLIP_SECONDS:.0f} s"
        else:
            fields = question_fields(text)
            if fields.get("answer") == "back":  # "called back": here the adverb, never the body part
                fields = {}
            rows.append({"file_name": name.replace("/", "-") + ".flac", "source": name, "text": text, **fields})
    return rows, left_out


def prompt_transcripts(transcripts: str = ASTERISK_TRANSCRIPTS) -> dict[str, str]:
    """Every asterisk prompt's name and its transcript as spoken (`clean_prompt_transcript`), sorted by name."""
    if not os.path.exists(transcripts):
        raise FileNotFoundError(f"no transcripts in {transcripts}: apt-get install -y asterisk-core-sounds-en")
    with gzip.open(transcripts, "rt", encoding="utf-8") as file:
        lines = [line.strip() for line in file if ":" in line and not line.startswith(";")]
    prompts = dict(tuple(part.strip() for part in line.split(":", 1)) for line in sorted(lines))
    return {name: clean_prompt_transcript(transcript) for name, transcript in prompts.items()}


def write_real_speech_split(directory: str, sounds_dir: str = ASTERISK_SOUNDS) -> list[dict]:
    """The asterisk prompts at 16 kHz (FLAC) with `metadata.jsonl`; `left_out.json` says which prompts are not in."""
    rows, left_out = real_speech_rows(sounds_dir)
    os.makedirs(directory, exist_ok=True)
    for row in rows:
        samples = load_audio(os.path.join(sounds_dir, row["source"] + ".wav"), SAMPLING_RATE)
        soundfile.write(os.path.join(directory, row["file_name"]), samples, SAMPLING_RATE, subtype="PCM_16")
        row["duration"] = round(len(samples) / SAMPLING_RATE, 3)
    write_rows(directory, rows)
    with open(os.path.join(directory, "left_out.json"), "w", encoding="utf-8") as file:
        json.dump(left_out, file, indent=1)
    return rows
