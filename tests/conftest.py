"""Shared fixtures: tiny random checkpoints, saved BLSP models, real speech clips. Nothing touches the network."""

import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.dirname(os.path.abspath(__file__))]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from speech import copy_speech_corpus  # noqa: E402
from tiny_models import build_tiny_checkpoints  # noqa: E402


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, str]:
    """Directories of a tiny Whisper, a tiny base Llama (no chat template) and a tiny chat Qwen2."""
    torch.manual_seed(0)
    return build_tiny_checkpoints(str(tmp_path_factory.mktemp("tiny")))


def save_untrained_blsp(whisper: str, llm: str, directory: str) -> str:
    """A BLSP checkpoint (model + processor) of `whisper` and `llm`, its adapter freshly seeded, in `directory`."""
    from modeling_blsp import BlspForConditionalGeneration
    from processing_blsp import BlspProcessor

    torch.manual_seed(0)
    model = BlspForConditionalGeneration.from_speech_text_pretrained(whisper, llm)
    model.save_pretrained(directory)
    BlspProcessor.from_speech_text_pretrained(whisper, llm, config=model.config).save_pretrained(directory)
    return directory


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
