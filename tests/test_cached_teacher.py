"""The cached teacher: step 1's top-k log-probabilities (`--teacher_top_k`) against step 2's live teacher."""

import json
import os

import numpy as np
import pytest
import torch
from datasets import load_dataset
from transformers import AutoTokenizer

import generate_continuations
import train_adapter
from data_blsp import CONTINUATIONS_METADATA_FILE, TEACHER_IDS, TEACHER_LOGPROBS
from modeling_blsp import BlspForConditionalGeneration
from processing_blsp import BlspProcessor
from training_blsp import SpeechPromptCollator, TrainingStep, kl_term

MAX_NEW_TOKENS = 8
TEMPERATURE = 2.0
SMALL_K = 8


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def step_one(speech_corpus, llm: str, output_dir: str, top_k: int) -> str:
    """Continuations of the clips by `llm`, left-padded batches of 3, with a cached teacher of `top_k`."""
    clips, rows = speech_corpus
    corpus = os.path.join(output_dir + "-corpus.jsonl")
    with open(corpus, "w") as file:
        for row in rows:
            file.write(json.dumps({"audio": os.path.join(clips, row["file_name"]), "text": row["text"]}) + "\n")
    generate_continuations.main(
        ["--dataset_name", corpus, "--llm_name_or_path", llm, "--output_dir", output_dir, "--batch_size", "3"]
        + ["--max_new_tokens", str(MAX_NEW_TOKENS), "--teacher_top_k", str(top_k)]
        + ["--teacher_temperature", str(TEMPERATURE)]
    )
    return output_dir


@pytest.fixture(scope="module")
def full_cache(speech_corpus, responsive_llm, tmp_path_factory) -> str:
    """Step 1 with the whole vocabulary cached (k = vocabulary size)."""
    vocabulary = len(AutoTokenizer.from_pretrained(responsive_llm))
    return step_one(speech_corpus, responsive_llm, str(tmp_path_factory.mktemp("full") / "out"), vocabulary)


@pytest.fixture(scope="module")
def small_cache(speech_corpus, responsive_llm, tmp_path_factory) -> str:
    return step_one(speech_corpus, responsive_llm, str(tmp_path_factory.mktemp("small") / "out"), SMALL_K)


def test_step_one_writes_the_cache_compactly_and_records_it(full_cache, small_cache, responsive_llm):
    with open(os.path.join(small_cache, CONTINUATIONS_METADATA_FILE)) as file:
        settings = json.load(file)
    assert settings["teacher_top_k"] == SMALL_K and settings["teacher_temperature"] == TEMPERATURE
    dataset = load_dataset(small_cache, split="train")
    assert str(dataset.features[TEACHER_IDS].feature.feature) == "Value('int32')"
    assert str(dataset.features[TEACHER_LOGPROBS].feature.feature) == "Value('float16')"
    tokenizer = AutoTokenizer.from_pretrained(responsive_llm)
    full = load_dataset(full_cache, split="train")
    assert full["continuation"] == dataset["continuation"]
    for row, full_row in zip(dataset, full):
        ids, logprobs = np.array(row[TEACHER_IDS]), np.array(row[TEACHER_LOGPROBS])
        tokens = tokenizer(row["continuation"], add_special_tokens=False)["input_ids"]
        assert ids.shape == logprobs.shape == (len(tokens) + 1, SMALL_K)  # each token and the end
        assert (np.diff(logprobs, axis=1) <= 0).all()  # most likely first
        np.testing.assert_array_equal(np.array(full_row[TEACHER_IDS])[:, :SMALL_K], ids)
        probabilities = np.exp(np.array(full_row[TEACHER_LOGPROBS], dtype=np.float64)).sum(-1)
        np.testing.assert_allclose(probabilities, 1.0, atol=2e-3)  # the whole distribution, float16 rounding
