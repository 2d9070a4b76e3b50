"""Train the demo checkpoint that `app.py` serves by default and record it in `world/demo_manifest.json`.

    python -m world.build_demo [--work_dir runs/demo] [--threads 1]
    python -m world.build_demo --refresh_code   # only copy the seven Hub code files anew into the shipped checkpoints

Runs BLSP on the miniature world as `python -m world.run` does, with its recipe and settings (speech before the
instruction, the KL objective, 3,000 steps): step 1
(`generate_continuations.py`) on the world's training clips, step 2 (`train_adapter.py`) on continuations only. The
trained model (the world's LLM and speech encoder plus the
adapter, with its processor and code files) is copied to `world/models/blsp`; the manifest records its files' sizes
and hashes, the settings and the hash of the world manifest it was built from, which `tests/test_app.py` checks.
"""

import argparse
import json
import os
import shutil
import time
from types import SimpleNamespace

import torch

from world import build_world, language, run

REPOSITORY = os.path.dirname(build_world.WORLD_DIR)
DEMO_DIR = os.path.join(build_world.WORLD_DIR, "models", "blsp")
DEMO_MANIFEST = os.path.join(build_world.WORLD_DIR, "demo_manifest.json")
ENGLISH_DIR = os.path.join(REPOSITORY, "english", "models", "blsp-whisper-tiny.en-smollm2-135m")
LAYOUT, LOSS = run.RECIPE
SHIPPED_SUFFIXES = (".json", ".jinja", ".safetensors", ".py")
HUB_CODE_FILES = (
    "configuration_blsp.py",
    "modeling_blsp.py",
    "adapter_blsp.py",
    "bases_blsp.py",
    "processing_blsp.py",
    "audio_blsp.py",
    "pipeline_blsp.py",
)
"""The model code `save_pretrained` writes next to the weights: the shipped copies must equal the top-level files."""
TRAINING_LOGS = ("all_results.json", "train_results.json", "trainer_state.json")


def without_checkout_paths(directory: str) -> None:
    """Make the base models' paths recorded in config.json relative to the repository, as in `world/models/llm`."""
    path = os.path.join(directory, "config.json")
    with open(path, encoding="utf-8") as file:
        text = file.read()
    with open(path, "w", encoding="utf-8") as file:
        file.write(text.replace(REPOSITORY + os.sep, ""))


def copy_checkpoint(trained_dir: str, destination: str) -> None:
    """The files a checkpoint needs to load (weights, configs, processor, code), not the training logs or card."""
    shutil.rmtree(destination, ignore_errors=True)
    os.makedirs(destination)
    for name in sorted(os.listdir(trained_dir)):
        path = os.path.join(trained_dir, name)
        if os.path.isfile(path) and name.endswith(SHIPPED_SUFFIXES) and name not in TRAINING_LOGS:
            shutil.copy(path, os.path.join(destination, name))
    without_checkout_paths(destination)


def refresh_code(manifest_path: str = DEMO_MANIFEST) -> None:
    """Copy the top-level Hub code files into the shipped checkpoints (the demo's and the English adapter) and record
    the demo's new sizes and hashes."""
    for directory in (DEMO_DIR, ENGLISH_DIR):
        for name in HUB_CODE_FILES:
            shutil.copy(os.path.join(REPOSITORY, name), os.path.join(directory, name))
    with open(manifest_path, encoding="utf-8") as file:
        manifest = json.load(file)
    manifest["files"] = build_world.file_records(DEMO_DIR)
    write_manifest(manifest, manifest_path)


def write_manifest(manifest: dict, path: str = DEMO_MANIFEST) -> None:
    with open(path, "w") as file:
        json.dump(manifest, file, indent=2)
        file.write("\n")


def build_demo(args) -> dict:
    """Steps 1 and 2 in `args.work_dir`, then the checkpoint copied to `world/models/blsp` and its manifest."""
    torch.set_num_threads(args.threads)
    shutil.rmtree(args.work_dir, ignore_errors=True)  # a fresh build: never resume from an older world's outputs
    os.makedirs(args.work_dir)
    start = time.perf_counter()
    continuations = run.generate_step1(args.work_dir, LAYOUT, None)
    trained = run.train_step2(args.work_dir, continuations, LAYOUT, LOSS, SimpleNamespace(**run.TRAINING))
    copy_checkpoint(trained, DEMO_DIR)
    return {
        "layout": LAYOUT,
        "loss": LOSS,
        "training": run.TRAINING,
        "world_manifest_sha256": build_world.sha256_of_files([build_world.MANIFEST]),
        "files": build_world.file_records(DEMO_DIR),
        "build_seconds": round(time.perf_counter() - start, 1),
        "threads": args.threads,
        "instructions": language.INSTRUCTIONS,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work_dir", default="runs/demo", help="Where steps 1 and 2 write their outputs.")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch (at most the free cores).")
    parser.add_argument("--refresh_code", action="store_true", help="Only copy the Hub code files anew (no training).")
    args = parser.parse_args()
    if args.refresh_code:
        refresh_code()
        return
    manifest = build_demo(args)
    write_manifest(manifest)
    print(json.dumps({key: manifest[key] for key in ("files", "build_seconds")}, indent=2))


if __name__ == "__main__":
    main()
