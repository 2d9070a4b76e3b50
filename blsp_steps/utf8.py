"""Text files with bytes that are not UTF-8: read from a repaired copy, so only the rows holding them are rejected."""

import hashlib
import logging
import os
import tempfile

logger = logging.getLogger(__name__)


def utf8_version(path: str) -> str:
    """`path` if it is UTF-8 text, else a copy (in the temporary folder) with its undecodable bytes as U+FFFD."""
    with open(path, "rb") as file:
        bad = [number for number, line in enumerate(file, 1) if not is_utf8(line)]
    if not bad:
        return path
    logger.warning("%s: line(s) %s hold bytes that are not UTF-8; rows holding them are rejected.", path, bad[:20])
    key = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()
    copy = os.path.join(tempfile.gettempdir(), "blsp_utf8", key, os.path.basename(path))
    os.makedirs(os.path.dirname(copy), exist_ok=True)
    with open(path, "rb") as source, open(copy, "w", encoding="utf-8") as file:
        file.writelines(line.decode("utf-8", errors="replace") for line in source)
    return copy


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
