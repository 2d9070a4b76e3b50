"""Audio in for BLSP: any accepted input (path, URL, base64, bytes, array, dict) as float32 mono at the model's rate,
within the limits every door applies; each 30 s window's Whisper log-mel.

Every failure is an `AudioInputError` whose message names the input and says what to do.
"""

import base64
import binascii
import io
import os
import time
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

MAX_AUDIO_SECONDS = 3600.0
"""The longest clip a processor accepts by default (`BlspProcessor.max_audio_seconds`), read from the header before
decoding and checked again after."""

MAX_AMPLITUDE = 10.0
"""The largest absolute sample value accepted (full scale is 1.0): a clip 20 dB beyond it is a scaling mistake (e.g.
int16 values given as floats), whose log-mel overflows or leaves Whisper's range, answered with nothing or noise."""

URL_TIMEOUT_SECONDS = 30
"""How long fetching an audio URL may take in all (checked between reads; each read waits at most as long)."""
MAX_URL_BYTES = 64 * 2**20
"""The largest audio body fetched from a URL."""
AUDIO_LOCATIONS_ENV = "BLSP_AUDIO_LOCATIONS"
"""Comma-separated folders and URL prefixes from which a conversation's audio paths and URLs may be read (the
operator's allow-list, e.g. at `transformers serve` launch); empty by default: a conversation reads only the audio it
carries."""
REMOTE = ("http://", "https://")


def to_float(samples: np.ndarray) -> np.ndarray:
    """Samples as float32 in [-1, 1]: integer PCM is scaled by its dtype's range (int16 by 32768, uint8 about 128)."""
    if np.issubdtype(samples.dtype, np.signedinteger):
        return (samples / -float(np.iinfo(samples.dtype).min)).astype(np.float32)
    if np.issubdtype(samples.dtype, np.unsignedinteger):
        middle = (float(np.iinfo(samples.dtype).max) + 1) / 2
        return ((samples - middle) / middle).astype(np.float32)
    return samples.astype(np.float32, copy=False)


def check_amplitude(samples: np.ndarray) -> None:
    """Refuse samples that are not finite or whose peak is far beyond full scale (`MAX_AMPLITUDE`)."""
    if not np.isfinite(samples).all():
        raise AudioInputError("it contains NaN or infinite values")
    peak = float(np.abs(samples).max()) if np.issubdtype(samples.dtype, np.floating) else 0.0
    if peak > MAX_AMPLITUDE:
        raise AudioInputError(
            f"its peak amplitude {peak:.3g} is far beyond full scale (samples are floats in [-1, 1], at most "
            f"{MAX_AMPLITUDE:g} accepted); scale it, e.g. divide int16 values given as floats by 32768"
        )


def decode_base64(text: str) -> bytes | None:
    """The bytes of a base64 string, or None if it is not one."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None


def fetch_url(url: str) -> bytes:
    """The body of an audio URL: at most `MAX_URL_BYTES`, within `URL_TIMEOUT_SECONDS` in all."""
    deadline, body = time.monotonic() + URL_TIMEOUT_SECONDS, bytearray()
    try:
        with urllib.request.urlopen(url, timeout=URL_TIMEOUT_SECONDS) as response:
            while chunk := response.read1(2**16):
                body += chunk
                if len(body) > MAX_URL_BYTES:
                    raise AudioInputError(f"it is larger than {MAX_URL_BYTES // 2**20} MiB")
                if time.monotonic() > deadline:
                    raise AudioInputError(f"it took more than {URL_TIMEOUT_SECONDS} s to download")
    except AudioInputError:
        raise
    except (OSError, ValueError) as error:  # HTTPError, URLError and timeouts are OSErrors
        raise AudioInputError(f"could not be fetched ({error}); check the URL or download the file") from error
    return bytes(body)


def read_audio_file(source, check_length=None) -> tuple[np.ndarray, int]:
    """Decode a file path, URL, base64 string (bare or a `data:` URI, as OpenAI's `input_audio` carries it) or bytes
    with soundfile; returns (samples[, channels], sampling rate). `check_length(frames, rate)` sees the header's length
    before anything is decoded."""
    if isinstance(source, str) and source.startswith("data:"):
        header, _, payload = source.partition(",")
        if not header.endswith(";base64"):
            raise AudioInputError("a data: URI must hold base64 audio (data:audio/wav;base64,...)")
        source = decode_base64(payload)
        if source is None:
            raise AudioInputError("its base64 audio does not decode; send the file's bytes in base64")
    elif isinstance(source, str) and source.startswith(REMOTE):
        source = fetch_url(source)
    elif isinstance(source, str) and not os.path.exists(source):
        source = decode_base64(source)
        if source is None or len(source) < 44:  # shorter than any audio header: a path, such as "abcd"
            raise AudioInputError("the file does not exist; check the path")
    elif isinstance(source, str) and not os.path.isfile(source):
        raise AudioInputError("it is not a regular file (a folder, FIFO or device); give an audio file")
    if isinstance(source, (bytes, bytearray)):
        source = io.BytesIO(source)
    try:
        with soundfile.SoundFile(source) as file:
            if check_length is not None:
                check_length(file.frames, file.samplerate)
            return file.read(dtype="float32", always_2d=False), file.samplerate
    except AudioInputError:
        raise
    except Exception as error:  # soundfile raises several types for unreadable input
        raise AudioInputError(f"could not decode it as audio ({error}); give a WAV/FLAC/OGG/MP3 file") from error


def audio_array_and_rate(source, sampling_rate: int | None, check_length=None) -> tuple[np.ndarray, int | None]:
    """Unpack an input: path, URL, bytes, array, `{"array"|"raw", "sampling_rate"}` or `{"path"|"bytes"}`."""
    if isinstance(source, (str, os.PathLike, bytes, bytearray)):
        return read_audio_file(os.fspath(source) if isinstance(source, os.PathLike) else source, check_length)
    if isinstance(source, dict):
        for key in ("array", "raw"):
            if source.get(key) is not None:
                return np.asarray(source[key]), source.get("sampling_rate", sampling_rate)
        if source.get("bytes") is not None:
            return read_audio_file(source["bytes"], check_length)
        if source.get("path") is not None:
            return read_audio_file(source["path"], check_length)
        raise AudioInputError(f"an audio dict needs 'array', 'raw', 'bytes' or 'path'; got keys {sorted(source)}")
    if isinstance(source, torch.Tensor):
        source = source.detach().float().cpu().numpy()
    return np.asarray(source), sampling_rate


def is_allowed(location: str, allowed: list[str]) -> bool:
    """Whether a path or URL lies inside one of the `allowed` folders or URL prefixes."""
    if location.startswith(REMOTE):
        return any(entry.startswith(REMOTE) and location.startswith(entry) for entry in allowed)
    path = os.path.realpath(location)
    folders = [os.path.realpath(entry) for entry in allowed if not entry.startswith(REMOTE)]
    return any(os.path.commonpath([path, folder]) == folder for folder in folders)


def carried_audio(source, allowed: list[str]):
    """A conversation's audio source when it may be read: what the request carries (an array, bytes, a `data:` URI;
    base64, returned decoded) or a path or URL inside the operator's `allowed` locations. Anything else is refused
    without touching the file system or the network (no existence oracle, no port scan)."""
    location = source.get("path") if isinstance(source, dict) else source
    carried = isinstance(source, dict) and any(source.get(key) is not None for key in ("array", "raw", "bytes"))
    if carried or not isinstance(location, (str, os.PathLike)):
        return source
    location = os.fspath(location)
    if isinstance(source, str) and source.startswith("data:"):
        return source
    decoded = decode_base64(source) if isinstance(source, str) and not source.startswith(REMOTE) else None
    if decoded is not None:
        return decoded  # as bytes: "//etc//hosts" is valid base64 too, and must stay unread
    if is_allowed(location, allowed):
        return source
    raise AudioInputError(
        f"Bad {describe_source(location)}: a conversation's audio paths and URLs are read only from the locations the "
        f"operator allows ({AUDIO_LOCATIONS_ENV}, or processor.audio_locations); send the audio itself: base64 "
        "(`input_audio`), a data: URI or an array."
    )


def to_mono(samples: np.ndarray) -> np.ndarray:
    """Mix (samples, channels) or (channels, samples) down to one channel."""
    if samples.ndim == 1:
        return samples
    if samples.ndim != 2:
        raise AudioInputError(f"expected a 1-D (mono) or 2-D (multi-channel) array, got {samples.ndim} dimensions")
    channel_axis = 0 if samples.shape[0] < samples.shape[1] else 1
    return samples.mean(axis=channel_axis)


def load_audio(source, target_sampling_rate: int, sampling_rate: int | None = None, check_length=None) -> np.ndarray:
    """Any accepted audio input as float32 mono at `target_sampling_rate`; clear errors for unusable input.

    Raw arrays without a sampling rate are taken to be at `target_sampling_rate` already. `check_length(samples)`
    (samples at the target rate; raises an `AudioInputError`) sees a file's length from its header before it is
    decoded, an array's before it is resampled, and the decoded clip's.
    """

    def check_header(frames: int, rate: int) -> None:
        if check_length is not None and rate > 0:
            check_length(round(frames * target_sampling_rate / rate))

    try:
        samples, rate = audio_array_and_rate(source, sampling_rate, check_header)
        if samples.dtype == object or not np.issubdtype(samples.dtype, np.number) or np.iscomplexobj(samples):
            raise AudioInputError(f"expected real numbers, got an array of {samples.dtype}")
        if samples.size == 0:
            raise AudioInputError("it is empty (0 samples)")
        check_amplitude(samples)  # before float32, which turns 1e300 into inf
        samples = to_mono(to_float(samples))
        rate = target_sampling_rate if rate is None else rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float, np.number)) or not 0 < rate < float("inf"):
            raise AudioInputError(f"its sampling rate {rate!r} is not a positive number of samples per second")
        check_header(len(samples), rate)
        if rate != target_sampling_rate:
            samples = soxr.resample(samples, rate, target_sampling_rate).astype(np.float32, copy=False)
        min_samples = round(MIN_AUDIO_SECONDS * target_sampling_rate)
        if len(samples) < min_samples:
            raise AudioInputError(
                f"it is too short ({len(samples)} samples at {target_sampling_rate} Hz; at least {min_samples}, "
                f"{1000 * MIN_AUDIO_SECONDS:g} ms, are needed)"
            )
        if check_length is not None:
            check_length(len(samples))
    except AudioInputError as error:
        raise AudioInputError(f"Bad {describe_source(source)}: {error}.") from None
    return samples


def window_lengths(num_samples: int, window_samples: int) -> list[int]:
    """Split a clip into the fewest windows of at most `window_samples`, of near-equal length (no tiny tail)."""
    num_windows = max(1, -(-num_samples // window_samples))
    base, extra = divmod(num_samples, num_windows)
    return [base + 1] * extra + [base] * (num_windows - extra)


def log_mel(feature_extractor, samples: np.ndarray, padding: str = "longest") -> np.ndarray:
    """Whisper log-mel of one clip of at most 30 s, featurised alone, one frame per hop.

    `padding="longest"`: the clip's frames only; `"max_length"`: the feature extractor's 30 s window, padding included
    (the clip's silence padded on its right, as Whisper pads it, whatever side the extractor pads batches on).
    """
    num_frames = len(samples) // feature_extractor.hop_length
    if padding == "max_length":
        samples = np.pad(samples, (0, feature_extractor.n_samples - len(samples)))
    features = feature_extractor(
        samples, sampling_rate=feature_extractor.sampling_rate, padding="longest", return_tensors="np"
    )["input_features"][0]
    return features if padding == "max_length" else features[:, :num_frames]


def pad_log_mels(
    features: list[np.ndarray], frame_counts: list[int] | None = None, num_frames: int | None = None
) -> dict[str, torch.Tensor]:
    """Zero-pad (mel, frames) features to `num_frames` (default: the longest): `input_features` and
    `input_features_mask`, 1 on real frames.

    Real frames are the first `frame_counts[i]` of feature i (default: all of its frames).
    """
    num_frames = num_frames or max(feature.shape[-1] for feature in features)
    frame_counts = frame_counts or [feature.shape[-1] for feature in features]
    padded = np.zeros((len(features), features[0].shape[0], num_frames), dtype=np.float32)
    mask = np.zeros((len(features), num_frames), dtype=np.int64)
    for index, (feature, frames) in enumerate(zip(features, frame_counts)):
        padded[index, :, : feature.shape[-1]] = feature
        mask[index, :frames] = 1
    return {"input_features": torch.from_numpy(padded), "input_features_mask": torch.from_numpy(mask)}
