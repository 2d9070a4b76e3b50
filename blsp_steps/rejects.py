"""Rejected rows: why a clip or transcript cannot be used, and rejects files that survive their writer's `kill -9`."""

import json
import os

import numpy as np

from processing_blsp import AudioInputError, load_audio

from .corpora import ROW_ID, SAMPLING_RATE


def audio_source(audio: dict | None) -> str:
    """Where a clip comes from, for reject records: its path, or its size when it is embedded bytes."""
    if not audio:
        return "<no audio>"
    if isinstance(audio, str):
        return audio
    return audio.get("path") or f"<{len(audio.get('bytes') or b'')} bytes>"


def audio_rejection(audio: dict | None, min_seconds: float, silence_threshold: float) -> tuple[str, str] | None:
    """Why a clip cannot be used, as (reason, detail); None when it decodes to audible sound of a useful length."""
    if not audio or (audio.get("path") is None and audio.get("bytes") is None):
        return "missing_audio", "the row has no audio"
    try:
        samples = load_audio(audio, SAMPLING_RATE)
    except AudioInputError as error:
        return "unusable_audio", str(error)
    if len(samples) < min_seconds * SAMPLING_RATE:
        return "short_audio", f"{len(samples) / SAMPLING_RATE:.3f} s, less than {min_seconds} s"
    peak = float(np.abs(samples).max())
    if peak < silence_threshold:
        return "silent_audio", f"peak amplitude {peak:.2e} below {silence_threshold:.0e}"
    return None


def text_rejection(text) -> tuple[str, str] | None:
    """Why a transcript cannot be used, as (reason, detail); None for a non-blank string."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return "empty_transcript", "the transcript is empty"
    if not isinstance(text, str):
        return "non_text_transcript", f"the transcript is a {type(text).__name__}, not text"
    if "\ufffd" in text:
        return (
            "undecodable_transcript",
            "the transcript holds bytes that are not UTF-8 (read as U+FFFD); fix its encoding",
        )
    return None


def reject_record(row_id: int, source: str, reason: tuple[str, str]) -> dict:
    """One line of a rejects file: row id, source (the clip, or the corpus for a transcript), reason and detail."""
    return {ROW_ID: row_id, "source": source, "reason": reason[0], "detail": reason[1]}


class JsonlLog:
    """An append-only JSON-lines file, written a batch of records at a time, that survives its writer's `kill -9`.

    A line counts once its newline is written: a torn last line is ignored by `read_jsonl` and cut off here when
    the file is reopened for appending.
    """

    def __init__(self, path: str):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        drop_torn_line(path)
        self.file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()

    def append(self, records: list[dict]) -> None:
        if records:
            self.file.write("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
            self.file.flush()

    def close(self) -> None:
        self.file.close()


def drop_torn_line(path: str) -> None:
    """Cut an unterminated last line (left by a killed writer) off `path`, if it exists."""
    if not os.path.exists(path):
        return
    with open(path, "rb+") as file:
        content = file.read()
        file.truncate(content.rfind(b"\n") + 1)


def read_jsonl(path: str) -> list[dict]:
    """The complete lines of a JSON-lines file (none if it does not exist)."""
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as file:
        return [json.loads(line) for line in file if line.endswith("\n")]
