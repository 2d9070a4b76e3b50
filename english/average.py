"""Average the weights of checkpoints of one training lineage: stochastic weight averaging (Izmailov et al., 2018,
arXiv 1803.05407) over the ends of the CTC warm-up's cosine cycles, each a low point of the learning rate.

    python -m english.average --checkpoints runs/english/ctc-fortunes-more/checkpoint-900 \
        runs/english/ctc-fortunes-long/checkpoint-1350 --output_dir runs/english/ctc-average

Every floating-point weight is the mean of the checkpoints' (the frozen bases are equal in all, so they stay as they
are); the checkpoints must share their config, and the first one's processor is saved beside the average with
`averaged_from.json` (each checkpoint and its step). Tried once (english/README.md, step 4t): the average of three
cycle ends read the dev splits like the last of them, the two older ones being worse.
"""

import argparse
import json
import os

import torch
from safetensors.torch import load_file
from transformers import TrainerState

from modeling_blsp import BlspForConditionalGeneration
from processing_blsp import BlspProcessor

SOURCES_FILE = "averaged_from.json"
VOLATILE_CONFIG_KEYS = ("_name_or_path", "transformers_version")
"""Config entries that may differ between checkpoints of one model."""


def read_config(checkpoint: str) -> dict:
    path = os.path.join(checkpoint, "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"{checkpoint} has no config.json: give checkpoint folders that train_adapter.py saved.")
    with open(path, encoding="utf-8") as file:
        config = json.load(file)
    return {key: value for key, value in config.items() if key not in VOLATILE_CONFIG_KEYS}


def checkpoint_step(checkpoint: str) -> int | None:
    path = os.path.join(checkpoint, "trainer_state.json")
    return TrainerState.load_from_json(path).global_step if os.path.isfile(path) else None


def average_state_dicts(checkpoints: list[str]) -> dict[str, torch.Tensor]:
    """The mean of the checkpoints' floating-point weights; other tensors must be equal in all."""
    first = read_config(checkpoints[0])
    for checkpoint in checkpoints[1:]:
        config = read_config(checkpoint)
        if config != first:
            changed = sorted(key for key in set(config) | set(first) if config.get(key) != first.get(key))
            raise ValueError(
                f"{checkpoint} is not the same model as {checkpoints[0]} (config differs in {changed}): average "
                "checkpoints of one lineage only."
            )
    total, dtypes = None, None
    for checkpoint in checkpoints:
        path = os.path.join(checkpoint, "model.safetensors")
        if not os.path.isfile(path):
            raise ValueError(f"{checkpoint} has no model.safetensors: give full checkpoints, not adapter-only ones.")
        weights = load_file(path)
        if total is None:
            dtypes = {name: tensor.dtype for name, tensor in weights.items()}
            total = {
                name: tensor.double() if tensor.is_floating_point() else tensor for name, tensor in weights.items()
            }
            continue
        if set(weights) != set(total):
            raise ValueError(f"{checkpoint} holds other weights than {checkpoints[0]}: average one lineage only.")
        for name, tensor in weights.items():
            if tensor.shape != total[name].shape:
                raise ValueError(
                    f"{name} has shape {tuple(tensor.shape)} in {checkpoint}, {tuple(total[name].shape)} "
                    f"in {checkpoints[0]}."
                )
            if tensor.is_floating_point():
                total[name] += tensor.double()
            elif not torch.equal(tensor, total[name]):
                raise ValueError(f"{name} differs between {checkpoint} and {checkpoints[0]} and cannot be averaged.")
    return {
        name: (tensor / len(checkpoints)).to(dtypes[name]) if tensor.is_floating_point() else tensor
        for name, tensor in total.items()
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", nargs="+", required=True, help="Full checkpoint folders of one lineage.")
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args()
    if len(args.checkpoints) < 2:
        parser.error("--checkpoints needs two or more checkpoints to average.")
    if os.path.exists(os.path.join(args.output_dir, "model.safetensors")):
        parser.error(f"{args.output_dir} already holds a model; give a new --output_dir.")
    averaged = average_state_dicts(args.checkpoints)
    model = BlspForConditionalGeneration.from_pretrained(args.checkpoints[0])
    missing, unexpected = model.load_state_dict(averaged, strict=False)
    if unexpected or any(not name.endswith("lm_head.weight") for name in missing):
        raise ValueError(f"The averaged weights do not fit the model: missing {missing}, unexpected {unexpected}.")
    model.save_pretrained(args.output_dir)
    BlspProcessor.from_pretrained(args.checkpoints[0]).save_pretrained(args.output_dir)
    sources = [{"checkpoint": path, "step": checkpoint_step(path)} for path in args.checkpoints]
    with open(os.path.join(args.output_dir, SOURCES_FILE), "w", encoding="utf-8") as file:
        json.dump(sources, file, indent=1)
    print(f"averaged {len(args.checkpoints)} checkpoints into {args.output_dir}")


if __name__ == "__main__":
    main()
