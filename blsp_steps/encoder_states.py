"""Step 2's frozen speech encoder, run once per clip: its states stored on disk and read on later epochs and runs.

Each clip's states (float16, valid frames only) are stored under the SHA-256 of the waveform the processor is given
(after speed perturbation and telephone band, which are deterministic per drawn variant, so each variant is its own
entry). The directory records the encoder's fingerprint (its weights, the feature extractor's settings, the encoder
padding mode and the silence the processor adds around each clip) and is refused for any other encoder.
SpecAugment's time masks then act on the states.
"""

import hashlib
import json
import os

import numpy as np
import torch
from torch import nn

INFO_FILE = "encoder_states.json"
CACHE_KEYS = "speech_cache_keys"


def clip_key(clip: np.ndarray) -> str:
    """The identity of a clip as the processor is given it: the SHA-256 of its float32 samples."""
    return hashlib.sha256(np.ascontiguousarray(clip, dtype=np.float32).tobytes()).hexdigest()


def encoder_fingerprint(model, feature_extractor, audio_padding_seconds: float = 0.0) -> dict:
    """What the cached states depend on: the encoder's weights, the features, the padding mode and the silence the
    processor adds around each clip (recorded only when there is some, so older directories stay valid)."""
    digest = hashlib.sha256()
    for name, tensor in model.speech_encoder.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    features = {
        key: getattr(feature_extractor, key, None)
        for key in ("feature_size", "sampling_rate", "hop_length", "n_fft", "chunk_length", "dither")
    }
    fingerprint = {
        "encoder_sha256": digest.hexdigest(),
        "features": features,
        "encoder_padding": model.config.encoder_padding,
    }
    if audio_padding_seconds:
        fingerprint["audio_padding_seconds"] = audio_padding_seconds
    return fingerprint


class EncoderStateCache:
    """A directory of clips' encoder states, refused when it was written for another encoder."""

    def __init__(self, directory: str, fingerprint: dict):
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        info = os.path.join(directory, INFO_FILE)
        if os.path.exists(info):
            with open(info, encoding="utf-8") as file:
                recorded = json.load(file)
            if recorded != fingerprint:
                changed = sorted(key for key in fingerprint if recorded.get(key) != fingerprint[key])
                raise ValueError(
                    f"{directory} holds encoder states of another speech encoder or feature setup (differs in: "
                    f"{', '.join(changed)}; recorded in {info}). Give another --encoder_states_dir, or delete this "
                    "one to compute the states again."
                )
        else:
            with open(f"{info}.tmp", "w", encoding="utf-8") as file:
                json.dump(fingerprint, file, indent=2)
            os.replace(f"{info}.tmp", info)
        self.hits = self.misses = 0

    def path(self, key: str) -> str:
        return os.path.join(self.directory, key[:2], f"{key}.npy")

    def get(self, key: str) -> torch.Tensor | None:
        try:
            states = np.load(self.path(key))
        except FileNotFoundError:
            return None
        return torch.from_numpy(states)

    def put(self, key: str, states: torch.Tensor):
        """Store (frames, hidden) states as float16; written to a temporary name first, so a killed run leaves no
        half-written entry."""
        path = self.path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        temporary = f"{path}.{os.getpid()}.tmp.npy"
        np.save(temporary, states.detach().to("cpu", torch.float16).numpy())
        os.replace(temporary, path)

    def states(self, model, inputs: dict, keys: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's encoder states, (clips, frames, hidden) zero-padded, and their lengths: read where stored,
        else computed by the model's frozen encoder and stored. Computed states are rounded to float16 as stored,
        so every epoch sees the same values."""
        found = [self.get(key) for key in keys]
        missing = [index for index, states in enumerate(found) if states is None]
        if missing:
            with torch.no_grad():
                hidden, lengths = model.encode_speech(
                    inputs["input_features"][missing], inputs["input_features_mask"][missing]
                )
            for index, states, length in zip(missing, hidden, lengths.tolist()):
                found[index] = states[:length].to("cpu", torch.float16)
                self.put(keys[index], found[index])
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        device = inputs["input_features"].device
        lengths = torch.tensor([len(states) for states in found], device=device)
        padded = nn.utils.rnn.pad_sequence([states.float() for states in found], batch_first=True)
        return padded.to(device), lengths


def read_speech_states(cache: EncoderStateCache, model, inputs: dict, keys: list[str], augmentation=None) -> dict:
    """The model inputs with the encoder's states (read, or computed and stored) in place of the log-mel features;
    SpecAugment's time masks on them in training (`augmentation`)."""
    inputs = dict(inputs)
    states, lengths = cache.states(model, inputs, keys)
    if augmentation is not None:
        states = augmentation.state_masks(states, lengths)
    del inputs["input_features"], inputs["input_features_mask"]
    return inputs | {"speech_encoder_states": states, "speech_encoder_lengths": lengths}
