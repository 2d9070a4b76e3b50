"""The frozen bases of BLSP: loaded by name with the caller's loading kwargs, and, for an adapter-only checkpoint,
refused (naming them) unless they are a Whisper encoder and an LLM of the shapes and the weights the adapter was
trained on, as the fingerprints recorded when it was saved say."""

import hashlib

import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PreTrainedModel
from transformers.models.whisper.modeling_whisper import WhisperEncoder
from transformers.utils import logging

try:
    from .configuration_blsp import HUB_KWARGS, BlspConfig
except ImportError:  # imported as a top-level module by this repository's scripts
    from configuration_blsp import HUB_KWARGS, BlspConfig

logger = logging.get_logger(__name__)

BASE_MODULES = ("speech_encoder.", "language_model.")
"""Parameter prefixes of the frozen bases, which an adapter-only checkpoint does not store."""
BASE_SHAPE_FIELDS = {
    "speech_config": ("model_type", "d_model", "encoder_layers", "num_mel_bins"),
    "text_config": ("model_type", "hidden_size", "num_hidden_layers", "vocab_size"),
}
"""Config fields that a base loaded for an adapter-only checkpoint must share with the config saved beside it."""
BASE_FLAGS = {"speech_config": "speech_model_name_or_path", "text_config": "text_model_name_or_path"}
BASE_LOADING_KWARGS = tuple(key for key in HUB_KWARGS if key != "revision")
"""The caller's `from_pretrained` kwargs that reach both bases (`revision` is the BLSP checkpoint's own: a base's goes
in `speech_kwargs` / `text_kwargs`)."""
SAMPLES_PER_TENSOR = 64
FINGERPRINT_DTYPES = ("float32", "bfloat16", "float16")
"""The precisions a fingerprint is recorded in: the bases' own at save time, and those below it that a load may cast
them to (`dtype=`)."""


def load_bases(
    speech_name_or_path: str, text_name_or_path: str, dtype=None, speech_kwargs=None, text_kwargs=None
) -> tuple[WhisperEncoder, PreTrainedModel]:
    """The encoder of a pretrained Whisper and a pretrained causal LM (no remote code: both are transformers'); a
    speech base that is not a Whisper checkpoint is refused, naming it, before its weights are read."""
    speech_kwargs, text_kwargs = speech_kwargs or {}, text_kwargs or {}
    config_kwargs = {key: value for key, value in speech_kwargs.items() if key in (*HUB_KWARGS, "subfolder")}
    model_type = AutoConfig.from_pretrained(speech_name_or_path, **config_kwargs).model_type
    if model_type != "whisper":
        raise ValueError(
            f"{speech_name_or_path!r} is not a Whisper checkpoint (its model_type is {model_type!r}): BLSP's speech "
            "base is a Whisper encoder, its text base the LLM."
        )
    speech_model = AutoModel.from_pretrained(speech_name_or_path, dtype=dtype, **speech_kwargs)
    language_model = AutoModelForCausalLM.from_pretrained(text_name_or_path, dtype=dtype, **text_kwargs)
    return speech_model.get_encoder(), language_model


def bases_kwargs(hub_kwargs: dict, device_map, speech_kwargs: dict | None, text_kwargs: dict | None):
    """The (speech, text) bases' `from_pretrained` kwargs for a BLSP load's kwargs, and the adapter's device (None:
    the encoder's)."""
    shared = {key: hub_kwargs[key] for key in BASE_LOADING_KWARGS if key in hub_kwargs}
    speech_map, text_map, adapter_device = split_device_map(device_map)
    speech, text = {**shared, **speech_map, **(speech_kwargs or {})}, {**shared, **text_map, **(text_kwargs or {})}
    return (speech, text), adapter_device


def adapter_weights(weights_file: str) -> dict:
    """The tensors of an adapter-only checkpoint's weights file, refused (naming the file and them) where it holds
    weights of the bases, which would replace the bases' own."""
    state = load_file(weights_file)
    base_weights = sorted(key for key in state if key.startswith(BASE_MODULES))
    if base_weights:
        raise ValueError(
            f"{weights_file} is an adapter-only checkpoint's weights file but holds {len(base_weights)} tensors of the "
            f"frozen bases ({', '.join(base_weights[:5])}{', ...' if len(base_weights) > 5 else ''}), which would "
            "replace the bases' own: an adapter file holds the adapter's weights only."
        )
    return state


def split_device_map(device_map) -> tuple[dict, dict, object]:
    """A BLSP `device_map` as the kwargs of each base's `from_pretrained` and the adapter's device: one device (or
    "auto", {"": device}) for all, or a dict over `speech_encoder`, `adapter` and `language_model` (whose entries may
    name the LLM's own modules, `language_model.model.layers.0`)."""
    if device_map is None:
        return {}, {}, None
    if not isinstance(device_map, dict):
        device_map = {"": device_map}
    if set(device_map) == {""}:
        return {"device_map": device_map[""]}, {"device_map": device_map[""]}, None
    unknown = [key for key in device_map if key not in ("speech_encoder", "adapter", "language_model")]
    unknown = [key for key in unknown if not key.startswith("language_model.")]
    if unknown or "speech_encoder" not in device_map:
        raise ValueError(
            f"device_map {device_map} must give one device for all of BLSP, or a dict over 'speech_encoder' (needed), "
            "'adapter' and 'language_model' (or the LLM's own modules as 'language_model.<name>'); not "
            f"{unknown or 'without speech_encoder'}."
        )
    text_map = {key.removeprefix("language_model").removeprefix("."): value for key, value in device_map.items()}
    text_map = {key: value for key, value in text_map.items() if key not in ("speech_encoder", "adapter")}
    speech_map = {"device_map": {"": device_map["speech_encoder"]}}
    return speech_map, {"device_map": text_map}, device_map.get("adapter", device_map["speech_encoder"])


def weights_fingerprint(model: torch.nn.Module, dtype: str) -> str:
    """What identifies a model's weights, whatever copy, format or device they load from: a hash of every parameter's
    name, shape and 64 evenly spread values, cast to `dtype` (so weights loaded with `dtype=bfloat16` match their
    float32 original's bfloat16 fingerprint)."""
    digest = hashlib.sha256()
    for name, parameter in sorted(model.named_parameters()):
        flat = parameter.detach().reshape(-1)
        steps = min(flat.numel(), SAMPLES_PER_TENSOR)
        # integer spacing: float32 linspace rounds indices past 2**24 up beyond the last element
        values = flat[torch.arange(steps, device=flat.device) * (flat.numel() - 1) // max(steps - 1, 1)]
        digest.update(f"{name}{tuple(parameter.shape)}".encode())
        digest.update(values.to("cpu", getattr(torch, dtype)).contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def weights_dtype(model: PreTrainedModel) -> str | None:
    """The precision that a fingerprint of `model` can be taken in, or None where its values cannot be read as saved
    (quantized, offloaded to the meta device, or sharded: DeepSpeed ZeRO-3's partitions, FSDP2's DTensors)."""
    parameters = list(model.parameters())
    unreadable = (p.is_meta or hasattr(p, "ds_id") or hasattr(p, "placements") for p in parameters)
    if getattr(model, "is_quantized", False) or any(unreadable):
        return None
    dtype = str(next(p.dtype for p in parameters if p.is_floating_point())).removeprefix("torch.")
    return dtype if dtype in FINGERPRINT_DTYPES else None


def base_fingerprints(speech_encoder: WhisperEncoder, language_model: PreTrainedModel) -> dict:
    """The bases' fingerprints that an adapter-only checkpoint records: per base, one in its own precision and one
    in each lower precision it may be loaded in (float32 weights also in bfloat16 and float16)."""
    record = {}
    for key, model in (("speech_config", speech_encoder), ("text_config", language_model)):
        dtype = weights_dtype(model)
        if dtype is not None:
            dtypes = FINGERPRINT_DTYPES if dtype == "float32" else (dtype,)
            record[key.removesuffix("_config")] = {name: weights_fingerprint(model, name) for name in dtypes}
    return record


def check_bases(
    config: BlspConfig, speech_encoder: WhisperEncoder, language_model: PreTrainedModel, weights: bool = True
):
    """Fail, naming the base, when a loaded base is not the model the adapter-only checkpoint was trained on: another
    shape, or (where the checkpoint recorded them, and unless `weights=False`) other weights."""
    bases = {"speech_config": speech_encoder, "text_config": language_model}
    recorded_fingerprints = config.base_fingerprints or {}
    for key, fields in BASE_SHAPE_FIELDS.items():
        expected, loaded = getattr(config, key), bases[key].config
        name, flag = getattr(config, BASE_FLAGS[key]), BASE_FLAGS[key]
        differ = [f"{field} {getattr(loaded, field, None)} != {getattr(expected, field)}" for field in fields
                  if getattr(loaded, field, None) != getattr(expected, field)]  # fmt: skip
        if differ:
            raise ValueError(
                f"{name!r} is not the base this adapter was trained on ({', '.join(differ)}): point {flag} at the "
                "checkpoint its config names."
            )
        if not weights:
            continue
        recorded, dtype = recorded_fingerprints.get(key.removesuffix("_config")), weights_dtype(bases[key])
        if recorded is None:
            logger.warning_once(
                f"This adapter-only checkpoint records no fingerprint of its {key.removesuffix('_config')} base "
                f"(saved before they were recorded, or shipped without them): {name!r} is not checked to be the "
                "weights it was trained on."
            )
            continue
        compared = dtype if dtype in recorded else next(iter(recorded)) if dtype == "float32" else None
        if compared is None:
            logger.warning_once(
                f"{name!r} loaded in {dtype} cannot be checked against its fingerprints {list(recorded)}."
            )
        elif weights_fingerprint(bases[key], compared) != recorded[compared]:
            raise ValueError(
                f"{name!r} has the shape but not the weights of the base this adapter was trained on (its {compared} "
                f"fingerprint differs from the one the checkpoint recorded): its answers would differ from the trained "
                f"model's. Point {flag} at the weights the adapter was trained on, or pass check_base_identity=False "
                "to load it on these anyway."
            )


__all__ = [
    "adapter_weights",
    "base_fingerprints",
    "bases_kwargs",
    "check_bases",
    "load_bases",
    "split_device_map",
    "weights_fingerprint",
]
