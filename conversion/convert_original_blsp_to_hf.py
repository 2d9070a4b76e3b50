"""Convert the original BLSP release (cwang621/blsp; ModelScope `iic/blsp_lslm_7b`) into a BLSP checkpoint of ours.

The original folder is what transformers 4.31's `Trainer.save_model` wrote: `config.json` (`whisper_config`,
`llama_config`, `conv_kernel_sizes`, `adapter_inner_dim`; no `model_type`), `pytorch_model.bin` or its shards with
`pytorch_model.bin.index.json`, a Llama sentencepiece tokenizer and a `WhisperFeatureExtractor`. The weights are read
with `torch.load(weights_only=True)` (tensors only: no code in the pickles runs), renamed, and saved as safetensors
with the config, processor, generation config and code files, so that `AutoModel`, `AutoProcessor` and
`pipeline(..., trust_remote_code=True)` load them. The converted config and processor compute what the original did:
`encoder_padding="unmasked"`, `feature_padding="max_length"`, `speech_separator=""`, `prompt_tokenization="segments"`,
greedy decoding of at most 128 new tokens in float32 (its `generate.py`). See `docs/original_blsp.md`.

```bash
python conversion/convert_original_blsp_to_hf.py --checkpoint_dir blsp_lslm_7b --output_dir blsp-7b-hf
```
"""

import argparse
import json
import os
import shutil

import torch
from transformers import AutoTokenizer, GenerationConfig, LlamaConfig, WhisperConfig, WhisperFeatureExtractor
from transformers.utils import is_sentencepiece_available

from configuration_blsp import BlspConfig, add_speech_token
from modeling_blsp import BlspForConditionalGeneration
from processing_blsp import BlspProcessor

WEIGHTS_NAME, WEIGHTS_INDEX_NAME = "pytorch_model.bin", "pytorch_model.bin.index.json"
RENAMES = (  # original prefix -> ours; the adapter's own names first
    ("subsampler.conv_layers.", "adapter.convs."),
    ("adapter.fc1.", "adapter.bottleneck_down."),
    ("adapter.fc2.", "adapter.bottleneck_up."),
    ("speech_ln.", "adapter.layer_norm."),
    ("whisper_model.", "speech_encoder."),
    ("llama_model.", "language_model."),
)
ROTARY_BUFFER = "rotary_emb.inv_freq"  # a saved buffer in some Llama checkpoints; today's Llama computes it
ORIGINAL_PROCESSOR = {"feature_padding": "max_length", "speech_separator": "", "prompt_tokenization": "segments"}
ORIGINAL_GENERATION = {"max_new_tokens": 128, "min_new_tokens": 1, "do_sample": False}  # generate.py's settings
DTYPES = ("float32", "bfloat16", "float16", "auto")


def read_original_config(checkpoint_dir: str) -> dict:
    """The original `config.json`, checked to be the BLSP release's."""
    path = os.path.join(checkpoint_dir, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} does not exist: give the folder of the original BLSP release")
    with open(path) as file:
        original = json.load(file)
    if "qwen_config" in original:
        raise ValueError(f"{path} is a BLSP-Emo checkpoint (qwen_config), which this converter does not support yet.")
    missing = [
        key
        for key in ("whisper_config", "llama_config", "conv_kernel_sizes", "adapter_inner_dim")
        if key not in original
    ]
    if missing or original.get("model_type") == "blsp":
        raise ValueError(
            f"{path} is not the original BLSP release's config (missing {missing}, model_type "
            f"{original.get('model_type')!r}); a checkpoint with model_type 'blsp' is ours already."
        )
    return original


def convert_config(original: dict) -> BlspConfig:
    """Our config of the original: the same Whisper and Llama, adapter settings, the original's encoder padding."""
    kernels = [int(kernel) for kernel in str(original["conv_kernel_sizes"]).split(",")]
    if len(set(kernels)) != 1:
        raise ValueError(f"conv_kernel_sizes {original['conv_kernel_sizes']!r}: only equal kernel sizes are supported")
    sub_configs = {}
    for name, config_class in (("whisper_config", WhisperConfig), ("llama_config", LlamaConfig)):
        settings = {key: value for key, value in original[name].items() if key not in ("torch_dtype", "dtype")}
        sub_configs[name] = config_class(**settings)
    return BlspConfig(
        speech_config=sub_configs["whisper_config"],
        text_config=sub_configs["llama_config"],
        adapter_num_conv_layers=len(kernels),
        adapter_conv_kernel_size=kernels[0],
        adapter_conv_stride=2,
        adapter_bottleneck_dim=int(original["adapter_inner_dim"]),
        adapter_layer_norm_eps=1e-5,
        encoder_padding="unmasked",
    )


def read_original_weights(checkpoint_dir: str) -> dict[str, torch.Tensor]:
    """Every tensor of `pytorch_model.bin` or of the shards its index lists, read with `weights_only=True`."""
    index_path = os.path.join(checkpoint_dir, WEIGHTS_INDEX_NAME)
    if os.path.isfile(index_path):
        with open(index_path) as file:
            files = sorted(set(json.load(file)["weight_map"].values()))
    elif os.path.isfile(os.path.join(checkpoint_dir, WEIGHTS_NAME)):
        files = [WEIGHTS_NAME]
    else:
        raise FileNotFoundError(f"{checkpoint_dir} has neither {WEIGHTS_NAME} nor {WEIGHTS_INDEX_NAME}")
    state = {}
    for name in files:
        path = os.path.join(checkpoint_dir, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} is listed in {WEIGHTS_INDEX_NAME} but does not exist: copy it from the release."
            )
        try:
            state.update(torch.load(path, map_location="cpu", weights_only=True, mmap=True))
        except Exception as error:  # torch.load's errors name mmap, zip or pickle internals, not the file
            reason = "it is empty (0 bytes)" if os.path.getsize(path) == 0 else f"{type(error).__name__}: {error}"
            raise ValueError(
                f"{path} is not a PyTorch weights file that can be read ({reason}): copy it again from the release."
            ) from error
    return state


def rename_weights(state: dict[str, torch.Tensor], config: BlspConfig) -> dict[str, torch.Tensor]:
    """The original's weight names as ours; saved rotary buffers are checked against the config, then dropped."""
    renamed, unknown = {}, []
    for name, tensor in state.items():
        if name.endswith(ROTARY_BUFFER):
            head_dim = config.text_config.hidden_size // config.text_config.num_attention_heads
            theta = config.text_config.rope_parameters["rope_theta"]
            expected = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
            if not torch.allclose(tensor.float(), expected, rtol=1e-4, atol=0):
                raise ValueError(f"{name} differs from the rotary frequencies of llama_config (rope_theta {theta})")
            continue
        prefix = next((prefix for prefix in RENAMES if name.startswith(prefix[0])), None)
        if prefix is None:
            unknown.append(name)
        else:
            renamed[prefix[1] + name[len(prefix[0]) :]] = tensor
    if unknown:
        raise ValueError(f"weights the original BLSP model does not have: {unknown[:10]}")
    return renamed


def check_folders(checkpoint_dir: str, output_dir: str, overwrite: bool) -> None:
    """Refuse to write into the release itself, or over a non-empty folder unless `overwrite`; refuse a release
    lacking its tokenizer or feature extractor before anything is written."""
    if os.path.realpath(output_dir) == os.path.realpath(checkpoint_dir):
        raise ValueError(f"--output_dir {output_dir!r} is the release itself: give another folder.")
    if os.path.isdir(output_dir) and os.listdir(output_dir) and not overwrite:
        raise ValueError(
            f"--output_dir {output_dir!r} already holds files (another model?): pass --overwrite_output_dir to "
            "replace them, or give an empty folder."
        )
    needed = {"a tokenizer (tokenizer.model or tokenizer.json)": ("tokenizer.model", "tokenizer.json")}
    needed["the feature extractor (preprocessor_config.json)"] = ("preprocessor_config.json",)
    for what, names in needed.items():
        if not any(os.path.isfile(os.path.join(checkpoint_dir, name)) for name in names):
            raise FileNotFoundError(f"{checkpoint_dir!r} lacks {what}: copy it from the original release.")


def convert(checkpoint_dir: str, output_dir: str, dtype: str = "float32", overwrite: bool = False) -> str:
    """Write our checkpoint of the original BLSP release in `checkpoint_dir` to `output_dir`, atomically: every input
    is read before anything is written, into a staging folder that then replaces `output_dir`."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    config = convert_config(read_original_config(checkpoint_dir))
    check_folders(checkpoint_dir, output_dir, overwrite)
    if not os.path.isfile(os.path.join(checkpoint_dir, "tokenizer.json")) and not is_sentencepiece_available():
        raise ImportError("reading the release's Llama tokenizer (tokenizer.model) needs: pip install sentencepiece")
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir)
    feature_extractor = WhisperFeatureExtractor.from_pretrained(checkpoint_dir)
    config.speech_token_id = add_speech_token(tokenizer, config.speech_token)
    state = rename_weights(read_original_weights(checkpoint_dir), config)
    if dtype != "auto":
        state = {name: tensor.to(getattr(torch, dtype)) for name, tensor in state.items()}
    with torch.device("meta"):
        model = BlspForConditionalGeneration(config)
    expected = model.state_dict().keys()
    if state.keys() != expected:
        raise ValueError(
            f"the weights do not match the config: missing {sorted(expected - state.keys())[:10]}, "
            f"unexpected {sorted(state.keys() - expected)[:10]}"
        )
    model.load_state_dict(state, strict=True, assign=True)
    model.config.dtype = model.config.speech_config.dtype = model.config.text_config.dtype = model.dtype
    pad_token_id = tokenizer.eos_token_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id
    model.generation_config = GenerationConfig(
        **ORIGINAL_GENERATION,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad_token_id,
    )
    processor = BlspProcessor(
        feature_extractor=feature_extractor,
        tokenizer=tokenizer,
        speech_token=config.speech_token,
        speech_downsampling=config.speech_downsampling,
        **ORIGINAL_PROCESSOR,
    )
    staging = output_dir.rstrip(os.sep) + ".converting"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    shutil.rmtree(output_dir, ignore_errors=True)
    os.replace(staging, output_dir)
    return output_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint_dir", required=True, help="the original release's folder (config.json, weights)")
    parser.add_argument("--output_dir", required=True, help="where to save the converted BLSP checkpoint")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=DTYPES,
        help="saved dtype: float32 (default) is what the original computed in; auto keeps the stored one",
    )
    parser.add_argument(
        "--overwrite_output_dir", action="store_true", help="replace the files of a non-empty --output_dir"
    )
    args = parser.parse_args(argv)
    print(convert(args.checkpoint_dir, args.output_dir, args.dtype, args.overwrite_output_dir))


if __name__ == "__main__":
    main()
