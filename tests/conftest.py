"""Shared fixtures: tiny random checkpoints, saved BLSP models, real speech clips. Nothing touches the network."""

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tests.helpers.speech import copy_speech_corpus  # noqa: E402
from tests.helpers.steps import save_untrained_blsp  # noqa: E402
from tests.helpers.tiny_models import build_tiny_checkpoints  # noqa: E402

# Fixtures of the local Hub (local_hub, hub_env) and of the real checkpoints (real_whisper, real_llm, real_clips).
pytest_plugins = ["tests.helpers.hub_fixtures", "tests.helpers.real_weights"]


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, str]:
    """Directories of a tiny Whisper, a tiny base Llama (no chat template) and a tiny chat Qwen2."""
    torch.manual_seed(0)
    return build_tiny_checkpoints(str(tmp_path_factory.mktemp("tiny")))


@pytest.fixture(scope="session")
def saved_blsp(tiny_checkpoints, tmp_path_factory) -> dict[str, str]:
    """BLSP checkpoints (model + processor) saved with save_pretrained, keyed by LLM: "llama" and "qwen2"."""
    return {
        llm: save_untrained_blsp(
            tiny_checkpoints["whisper"], tiny_checkpoints[llm], str(tmp_path_factory.mktemp(f"blsp_{llm}"))
        )
        for llm in ("llama", "qwen2")
    }


@pytest.fixture(scope="session")
def speech_corpus(tmp_path_factory) -> tuple[str, list[dict]]:
    """A directory of real speech FLAC clips (the committed tests/data/speech) and their rows: file_name, text."""
    directory = str(tmp_path_factory.mktemp("speech"))
    return directory, copy_speech_corpus(directory)


@pytest.fixture(scope="session")
def responsive_llm(tiny_checkpoints, tmp_path_factory) -> str:
    """The tiny chat Qwen2 with its matrices scaled up to std 0.5.

    At std 0.02 its predictions are near uniform whatever the input, so no adapter could lower a loss.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = str(tmp_path_factory.mktemp("responsive_llm"))
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoints["qwen2"])
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.ndim == 2:
                parameter.mul_(25.0)
    model.save_pretrained(directory)
    AutoTokenizer.from_pretrained(tiny_checkpoints["qwen2"]).save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def initial_blsp(tiny_checkpoints, responsive_llm, tmp_path_factory) -> str:
    """A saved, untrained BLSP checkpoint (tiny Whisper + responsive LLM) to continue training from."""
    directory = str(tmp_path_factory.mktemp("initial_blsp"))
    return save_untrained_blsp(tiny_checkpoints["whisper"], responsive_llm, directory)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (`pytestmark = pytest.mark.usefixtures("one_torch_thread")`): tiny models gain
    nothing from threads, and spinning threads stall for seconds on a busy shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
