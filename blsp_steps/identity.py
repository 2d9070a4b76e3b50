"""Identity checks at every join and resume: what a run records so that a later one can tell that its inputs are
the same (model fingerprints, settings) and say exactly what changed when they are not."""

import hashlib
import json
import os

from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import cached_file

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
FULLY_HASHED_BYTES = 64 * 2**20
SAMPLED_CHUNKS, CHUNK_BYTES = 16, 2**16


def model_fingerprint(name_or_path: str) -> dict:
    """What identifies a model's weights without reading them all. A local folder: its config's hash, and per weight
    file its size, its safetensors header (names, dtypes, shapes) and a hash of the whole file, or for a file over
    64 MiB of 16 evenly spread 64 KiB chunks (any retraining changes them; a change confined to a few tensors may
    not). A Hub id: the commit its files are read from."""
    if not os.path.isdir(name_or_path):  # a Hub id: the commit of the snapshot its files come from
        return {"hub_commit": os.path.basename(os.path.dirname(cached_file(name_or_path, "config.json")))}
    record = {}
    for name in sorted(os.listdir(name_or_path)):
        path = os.path.join(name_or_path, name)
        if name == "config.json" or name.endswith(WEIGHT_SUFFIXES):
            record[name] = file_fingerprint(path, with_header=name.endswith(".safetensors"))
    return record


def file_fingerprint(path: str, with_header: bool = False) -> dict:
    size = os.path.getsize(path)
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        if with_header and size >= 8:  # 8 bytes: the header's length, then the header (JSON)
            digest.update(file.read(min(size - 8, int.from_bytes(file.read(8), "little"))))
            file.seek(0)
        if size <= FULLY_HASHED_BYTES:
            digest.update(file.read())
        else:
            for index in range(SAMPLED_CHUNKS):
                file.seek(index * (size - CHUNK_BYTES) // (SAMPLED_CHUNKS - 1))
                digest.update(file.read(CHUNK_BYTES))
    return {"bytes": size, "sha256": digest.hexdigest()}


def setting_changes(stored, current, name: str = "") -> list[str]:
    """Each setting that differs between two runs' settings, as `name: stored -> current` (nested names dotted)."""
    if isinstance(stored, dict) and isinstance(current, dict):
        keys = [*stored, *(key for key in current if key not in stored)]
        return [
            change
            for key in keys
            for change in setting_changes(stored.get(key), current.get(key), f"{name}.{key}" if name else key)
        ]
    return [] if stored == current else [f"{name}: {stored!r} -> {current!r}"]


MODELS_FILE = "blsp_models.json"
"""The fingerprints of the models a step-2 run started from, saved in each of its checkpoints."""


def check_resumed_models(models: dict[str, str | None], checkpoint: str | None) -> dict:
    """The fingerprints of `models` (flag -> name or path); refused when resuming from a `checkpoint` saved by a run
    that started from other weights, naming what changed (its adapter would otherwise be saved with another model)."""
    current = {flag: model_fingerprint(name) for flag, name in models.items() if name}
    recorded = os.path.join(checkpoint, MODELS_FILE) if checkpoint else None
    if recorded and os.path.isfile(recorded):
        with open(recorded, encoding="utf-8") as file:
            changes = setting_changes(json.load(file), current)
        if changes:
            raise ValueError(
                f"{checkpoint} was saved by a run that started from other models: {'; '.join(changes)}. Resume it "
                "with the same models, or pass --overwrite_output_dir or another --output_dir."
            )
    return current


class RecordModels(TrainerCallback):
    """Saves the run's model fingerprints in each checkpoint (`MODELS_FILE`)."""

    def __init__(self, fingerprints: dict):
        self.fingerprints = fingerprints

    def on_save(self, args, state, control, **kwargs):
        directory = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if state.is_world_process_zero and os.path.isdir(directory):
            with open(os.path.join(directory, MODELS_FILE), "w", encoding="utf-8") as file:
                json.dump(self.fingerprints, file, indent=2)
