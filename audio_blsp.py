"""Audio in for BLSP: any accepted input (path, URL, base64, bytes, array, dict) as float32 mono at the model's rate.

Every failure is an `AudioInputError` whose message names the input and says what to do.
"""

import base64
import binascii
import io
import os
import urllib.request

import numpy as np
import soundfile
import soxr
import torch


class AudioInputError(ValueError):
    """An audio input that cannot be used: the message names the input and says what to do."""


def describe_source(source) -> str:
    """A short name of an audio input for error messages."""
    if isinstance(source, str) and (source.startswith("data:") or len(source) > 256):
        return f"base64 audio ({len(source)} characters)"
    if isinstance(source, (str, os.PathLike)):
        return f"audio file {os.fspath(source)!r}"
    if isinstance(source, dict) and source.get("path"):
        return f"audio {source['path']!r}"
    return "audio array"


MIN_AUDIO_SECONDS = 0.025
"""The shortest clip every door accepts (processor, steps 1 and 2, evaluation, the demo, serve): one 25 ms window of
Whisper's log-mel, 400 samples at 16 kHz (its feature extractor fails at 200 samples or fewer)."""

URL_TIMEOUT_SECONDS = 30
"""How long an audio URL may take to answer (each network operation), so that a dead server cannot hang a job."""


def to_float(samples: np.ndarray) -> np.ndarray:
    """Samples as float32 in [-1, 1]: integer PCM is scaled by its dtype's range (int16 by 32768, uint8 about 128)."""
    if np.issubdtype(samples.dtype, np.signedinteger):
        return (samples / -float(np.iinfo(samples.dtype).min)).astype(np.float32)
    if np.issubdtype(samples.dtype, np.unsignedinteger):
        middle = (float(np.iinfo(samples.dtype).max) + 1) / 2
        return ((samples - middle) / middle).astype(np.float32)
    return samples.astype(np.float32, copy=False)


def decode_base64(text: str) -> bytes | None:
    """The bytes of a base64 string, or None if it is not one."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def read_audio_file(source) -> tuple[np.ndarray, int]:
    """Decode a file path, URL, base64 string (bare or a `data:` URI, as OpenAI's `input_audio` carries it) or bytes
    with soundfile; returns (samples[, channels], sampling rate)."""
    if isinstance(source, str) and source.startswith("data:"):
        header, _, payload = source.partition(",")
        source = decode_base64(payload) if header.endswith(";base64") else None
        if source is None:
            raise AudioInputError("a data: URI must hold base64 audio (data:audio/wav;base64,...)")
    elif isinstance(source, str) and source.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(source, timeout=URL_TIMEOUT_SECONDS) as response:
                source = io.BytesIO(response.read())
        except (OSError, ValueError) as error:  # HTTPError, URLError and timeouts are OSErrors
            raise AudioInputError(f"could not be fetched ({error}); check the URL or download the file") from error
    elif isinstance(source, str) and not os.path.exists(source):
        source = decode_base64(source)
        if source is None:
            raise AudioInputError("the file does not exist; check the path")
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    try:
        samples, sampling_rate = soundfile.read(source, dtype="float32", always_2d=False)
    except Exception as error:  # soundfile raises several types for unreadable input
        raise AudioInputError(f"could not decode it as audio ({error}); give a WAV/FLAC/OGG/MP3 file") from error
    return samples, sampling_rate


def audio_array_and_rate(source, sampling_rate: int | None) -> tuple[np.ndarray, int | None]:
    """Unpack an input: path, URL, bytes, array, `{"array"|"raw", "sampling_rate"}` or `{"path"|"bytes"}`."""
    if isinstance(source, (str, os.PathLike, bytes, bytearray)):
        return read_audio_file(os.fspath(source) if isinstance(source, os.PathLike) else source)
    if isinstance(source, dict):
        for key in ("array", "raw"):
            if source.get(key) is not None:
                return np.asarray(source[key]), source.get("sampling_rate", sampling_rate)
        if source.get("bytes") is not None:
            return read_audio_file(source["bytes"])
        if source.get("path") is not None:
            return read_audio_file(source["path"])
        raise AudioInputError(f"an audio dict needs 'array', 'raw', 'bytes' or 'path'; got keys {sorted(source)}")
    if isinstance(source, torch.Tensor):
        source = source.detach().float().cpu().numpy()
    return np.asarray(source), sampling_rate


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Mix (samples, channels) or (channels, samples) down to one channel."""
    if samples.ndim == 1:
        return samples
    if samples.ndim != 2:
        raise AudioInputError(f"expected a 1-D (mono) or 2-D (multi-channel) array, got {samples.ndim} dimensions")
    channel_axis = 0 if samples.shape[0] < samples.shape[1] else 1
    return samples.mean(axis=channel_axis)


def load_audio(source, target_sampling_rate: int, sampling_rate: int | None = None) -> np.ndarray:
    """Any accepted audio input as float32 mono at `target_sampling_rate`; clear errors for unusable input.

    Raw arrays without a sampling rate are taken to be at `target_sampling_rate` already.
    """
    try:
        samples, rate = audio_array_and_rate(source, sampling_rate)
        if samples.dtype == object or not np.issubdtype(samples.dtype, np.number):
            raise AudioInputError(f"expected numbers, got an array of {samples.dtype}")
        samples = to_mono(to_float(samples))
        if samples.size == 0:
            raise AudioInputError("it is empty (0 samples)")
        if not np.isfinite(samples).all():
            raise AudioInputError("it contains NaN or infinite values")
        rate = target_sampling_rate if rate is None else rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float, np.number)) or not 0 < rate < float("inf"):
            raise AudioInputError(f"its sampling rate {rate!r} is not a positive number of samples per second")
        if rate != target_sampling_rate:
            samples = soxr.resample(samples, rate, target_sampling_rate).astype(np.float32, copy=False)
        min_samples = round(MIN_AUDIO_SECONDS * target_sampling_rate)
        if len(samples) < min_samples:
            raise AudioInputError(
                f"it is too short ({len(samples)} samples at {target_sampling_rate} Hz; at least {min_samples}, "
                f"{1000 * MIN_AUDIO_SECONDS:g} ms, are needed)"
            )
    except AudioInputError as error:
        raise AudioInputError(f"Bad {describe_source(source)}: {error}.") from None
    return samples
