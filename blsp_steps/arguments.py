"""The scripts' shared argument conventions: `--dtype`, and flags or one .json/.yaml file of them."""

import json
import sys
from dataclasses import field, fields

import yaml
from transformers import HfArgumentParser

DTYPES = ["auto", "bfloat16", "float16", "float32"]


def dtype_field(note: str = ""):
    """`--dtype`, the one convention of the three scripts (that of transformers' examples)."""
    help_text = (
        "The dtype the weights load in: `auto` (default) keeps each checkpoint's own, as saved (its config's "
        "`dtype`); float32, bfloat16 or float16 cast them."
    )
    return field(default="auto", metadata={"help": help_text + note, "choices": DTYPES})


def parse_script_arguments(dataclass_types: tuple, argv: list[str] | None = None) -> tuple:
    """The scripts' arguments: flags, or a single .json/.yaml file holding them (transformers examples style)."""
    parser = HfArgumentParser(dataclass_types)
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 1 and argv[0].endswith((".json", ".yaml", ".yml")):
        with open(argv[0], encoding="utf-8") as file:
            settings = json.load(file) if argv[0].endswith(".json") else yaml.safe_load(file)
        return parser.parse_dict(resolve_aliases(settings, dataclass_types))
    return parser.parse_args_into_dataclasses(args=argv)


def resolve_aliases(settings: dict, dataclass_types: tuple) -> dict:
    """Settings from a file with each flag alias (a field's `aliases` metadata) renamed to the field's name."""
    renames = {
        alias.lstrip("-"): item.name
        for dataclass_type in dataclass_types
        for item in fields(dataclass_type)
        for alias in item.metadata.get("aliases", [])
    }
    return {renames.get(key, key): value for key, value in settings.items()}


def parse_config_overrides(overrides: str | None) -> dict:
    """`"ctc_beam_size=16,ctc_lm_weight=0.3"` -> keyword arguments for `from_pretrained`, which validates them with
    the config (as examples/pytorch's `--config_overrides`; values are JSON numbers, booleans or null, else strings)."""
    settings = {}
    for item in (overrides or "").split(","):
        if not item.strip():
            continue
        key, separator, value = item.partition("=")
        if not separator or not key.strip():
            raise ValueError(f"--config_overrides {overrides!r}: {item!r} is not key=value (e.g. ctc_beam_size=16).")
        try:
            settings[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            settings[key.strip()] = value
    return settings
