"""The cached teacher: step 1's top-k log-probabilities (`--teacher_top_k`) against step 2's live teacher."""

import json
import os
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from datasets import load_dataset
from transformers import AutoTokenizer

import train_adapter
from blsp_steps import training_data
from blsp_steps.corpora import CONTINUATIONS_METADATA_FILE, TEACHER_IDS, TEACHER_LOGPROBS
from blsp_steps.objectives import TrainingStep, kl_term
from blsp_steps.training import BlspTrainer, SpeechPromptCollator
from modeling_blsp import BlspForConditionalGeneration
from processing_blsp import BlspProcessor
from tests.helpers.steps import TEMPERATURE, logged_losses, model_flags, run_flags, step_one

SMALL_K = 8


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def full_cache(speech_corpus, responsive_llm, tmp_path_factory) -> str:
    """Step 1 with the whole vocabulary cached (k = vocabulary size)."""
    vocabulary = len(AutoTokenizer.from_pretrained(responsive_llm))
    return step_one(speech_corpus, responsive_llm, str(tmp_path_factory.mktemp("full") / "out"), vocabulary)


@pytest.fixture(scope="module")
def small_cache(speech_corpus, responsive_llm, tmp_path_factory) -> str:
    return step_one(speech_corpus, responsive_llm, str(tmp_path_factory.mktemp("small") / "out"), SMALL_K)


@pytest.fixture(scope="module")
def embedded_cache(speech_corpus, responsive_llm, tmp_path_factory) -> str:
    """`small_cache` with a copy of the audio (`--embed_audio`)."""
    output_dir = str(tmp_path_factory.mktemp("embedded") / "out")
    return step_one(speech_corpus, responsive_llm, output_dir, SMALL_K, "--embed_audio")


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


def training_rows(cache_dir: str, speech_corpus) -> list[dict]:
    """Step 1's rows as the collator reads them: audio of the source clip, prompt instruction recorded by step 1."""
    clips, corpus_rows = speech_corpus
    with open(os.path.join(cache_dir, CONTINUATIONS_METADATA_FILE)) as file:
        instruction = json.load(file)["instruction"]
    return [
        {
            **row,
            "audio": {"path": os.path.join(clips, corpus_rows[row["row_id"]]["file_name"]), "bytes": None},
            "instruction": instruction,
        }
        for row in load_dataset(cache_dir, split="train")
    ]


@pytest.fixture(scope="module")
def blsp(tiny_checkpoints, responsive_llm, tmp_path_factory):
    """An untrained BLSP model over the LLM of step 1, its processor, and a `BlspTrainer` for the KL objective."""
    torch.manual_seed(0)
    model = BlspForConditionalGeneration.from_speech_text_pretrained(tiny_checkpoints["whisper"], responsive_llm)
    processor = BlspProcessor.from_speech_text_pretrained(
        tiny_checkpoints["whisper"], responsive_llm, config=model.config
    )
    args = train_adapter.BlspTrainingArguments(
        output_dir=str(tmp_path_factory.mktemp("trainer")), use_cpu=True, report_to="none", loss="kl"
    )
    return model.eval(), processor, BlspTrainer(model=model, args=args)


def kl_step(blsp, rows: list[dict], cached: bool) -> TrainingStep:
    model, processor, trainer = blsp
    batch = SpeechPromptCollator(processor, with_teacher=True, cached_teacher=cached)(rows)
    batch.pop("num_skipped_rows")
    return TrainingStep(trainer, model, batch, None)


def test_cached_top_k_is_the_live_teachers_at_every_position(blsp, small_cache, full_cache, speech_corpus):
    """Step 1 (left-padded batches of 3, incremental decoding with a KV cache) and step 2's teacher (one forward on
    the transcript prompt and the response) give the same top-k tokens, in the same order, at every position; their
    log-probabilities differ by float16 rounding (half a unit in the last place: 2^-11 of the value) and float32
    summation order (1e-4 here, logits of a few tens)."""
    for cache in (small_cache, full_cache):
        rows = training_rows(cache, speech_corpus)
        with torch.no_grad():
            live = torch.log_softmax(kl_step(blsp, rows, cached=False).teacher.float() / TEMPERATURE, dim=-1)
        cached_ids, cached_logprobs = kl_step(blsp, rows, cached=True).teacher
        assert cached_ids.shape[0] == live.shape[0]  # one position per response token and the end, in order
        live_values = live.gather(-1, cached_ids)
        tolerance = 2**-11 * live_values.abs() + 1e-4
        assert ((cached_logprobs.float() - live_values).abs() <= tolerance).all()
        if cache == small_cache:
            assert torch.equal(cached_ids, live.topk(SMALL_K, dim=-1).indices)


def test_cached_kl_equals_live_with_the_whole_vocabulary(blsp, full_cache, small_cache, speech_corpus):
    """With k = vocabulary the cached KL is the live one, up to the float16 rounding of the teacher (relative 1e-3);
    with a small k it is a lower bound (the teacher's shape inside its tail is not kept)."""
    rows = training_rows(full_cache, speech_corpus)
    with torch.no_grad():
        live = kl_term(kl_step(blsp, rows, cached=False))
        full = kl_term(kl_step(blsp, rows, cached=True))
        small = kl_term(kl_step(blsp, training_rows(small_cache, speech_corpus), cached=True))
    torch.testing.assert_close(full, live, rtol=1e-3, atol=0)
    assert 0 < small <= live


def train(tiny_checkpoints, responsive_llm, dataset: str, output_dir: str, *flags: str) -> list[float]:
    """30 steps of the KL objective on every row at once (the test_train_adapter settings); the logged losses."""
    objective = ("--loss", "kl", "--kl_temperature", str(TEMPERATURE), "--learning_rate", "3e-3")
    train_adapter.main(
        model_flags(tiny_checkpoints, responsive_llm) + run_flags(dataset, output_dir, 30, *objective, *flags)
    )
    return logged_losses(output_dir)


def test_cached_gradients_are_the_live_ones(blsp, full_cache, small_cache, speech_corpus):
    """The adapter's gradient of the KL: with k = vocabulary the live one (relative 1e-3 in norm: float16 teacher);
    with k = 8 of a 400-token vocabulary, still pointing the same way (cosine above 0.9)."""
    model = blsp[0]
    gradients = {}
    for name, cache, cached in (("live", full_cache, False), ("full", full_cache, True), ("small", small_cache, True)):
        model.zero_grad()
        kl_term(kl_step(blsp, training_rows(cache, speech_corpus), cached)).backward()
        gradients[name] = torch.cat([parameter.grad.flatten() for parameter in model.adapter.parameters()])
    model.zero_grad()
    live = gradients["live"]
    assert (gradients["full"] - live).norm() <= 1e-3 * live.norm()
    assert torch.nn.functional.cosine_similarity(gradients["small"], live, dim=0) > 0.9


def test_training_with_the_cached_teacher_follows_the_live_one(
    tiny_checkpoints, responsive_llm, full_cache, small_cache, blsp, speech_corpus, tmp_path
):
    """30 Adam steps with the cached teacher lower the live KL nearly as much as 30 steps with the live teacher: at
    least 85% as much with k = vocabulary (89% when written), 65% with k = 8 of 400 tokens (74%). Logged losses are
    not compared step by step: Adam's first steps divide by
    the gradients' own size, so the float16 teacher's 1e-4 differences grow along the run either way."""
    runs = {
        "live": (full_cache, "live"),
        "full": (full_cache, "auto"),  # auto reads the cache
        "small": (small_cache, "cached"),
    }
    for name, (dataset, teacher) in runs.items():
        losses = train(tiny_checkpoints, responsive_llm, dataset, str(tmp_path / name), "--teacher", teacher)
        assert losses[-1] < 0.85 * losses[0], (name, losses)
    rows = training_rows(full_cache, speech_corpus)
    model, processor, trainer = blsp

    def live_kl(directory: str | None) -> float:
        step_model = model if directory is None else BlspForConditionalGeneration.from_pretrained(directory).eval()
        with torch.no_grad():
            return float(kl_term(kl_step((step_model, processor, trainer), rows, cached=False)))

    before = live_kl(None)
    after = {name: live_kl(str(tmp_path / name)) for name in runs}
    for name, share in (("full", 0.85), ("small", 0.65)):
        assert before - after[name] >= share * (before - after["live"]), (before, after)


@pytest.mark.parametrize("loss", ["ce", "kl"])
def test_padding_free_batch_gives_the_padded_loss_and_gradients(blsp, full_cache, speech_corpus, loss):
    """Packed into one row (sdpa, position_ids restarting per sample) the batch gives the padded batch's loss and
    adapter gradients up to float32 summation order (relative 1e-4, each gradient tensor in norm: other kernels,
    another reduction order)."""
    model, processor, trainer = blsp
    rows = training_rows(full_cache, speech_corpus)
    assert len({len(row["continuation"]) for row in rows}) > 1  # rows differ in length: the padded batch has padding
    results = []
    for padding_free in (False, True):
        trainer.args.padding_free = padding_free
        model.zero_grad()
        batch = SpeechPromptCollator(processor, with_teacher=loss == "kl")(rows)
        batch.pop("num_skipped_rows")
        step = TrainingStep(trainer, model, batch, None)
        value = step.student[0].loss if loss == "ce" else kl_term(step)
        value.backward()
        results.append((value.detach(), [parameter.grad.clone() for parameter in model.adapter.parameters()]))
    trainer.args.padding_free = False
    (padded, padded_grads), (packed, packed_grads) = results
    torch.testing.assert_close(packed, padded, rtol=1e-4, atol=0)
    for packed_grad, padded_grad in zip(packed_grads, padded_grads):  # per tensor: entries near 0 are sums that cancel
        assert (packed_grad - padded_grad).norm() <= 1e-4 * padded_grad.norm()


def streamed_and_map_style(caches: list[str], output_dir: str) -> tuple[list[dict], list[dict]]:
    """Step 2's training rows of `caches`, streamed (in the stream's order) and map-style."""
    data_args = train_adapter.DataArguments(dataset_name=caches, streaming=True)
    training_args = train_adapter.BlspTrainingArguments(output_dir=output_dir, report_to="none")
    stream, _ = training_data.stream_datasets(data_args, training_args)
    mapped, _ = training_data.prepare_dataset(caches, "train", data_args, {"kl"}, "length")
    assert (TEACHER_IDS in stream.column_names) == (TEACHER_IDS in mapped.column_names)
    return list(stream), list(mapped)


@pytest.mark.parametrize("layout", ["joined", "embedded"])
def test_streamed_rows_give_the_map_style_cached_teacher(layout, small_cache, embedded_cache, blsp, tmp_path):
    """Streamed, the rows carry step 1's cached teacher (text-only output joined with the source corpus by row id,
    or an --embed_audio output's own shards): collated, the batch equals the map-style rows' tensor for tensor."""
    streamed, mapped = streamed_and_map_style([small_cache if layout == "joined" else embedded_cache], str(tmp_path))
    mapped = {row["row_id"]: row for row in mapped}
    assert sorted(row["row_id"] for row in streamed) == sorted(mapped) and len(streamed) > 1
    collator = SpeechPromptCollator(blsp[1], with_teacher=True, cached_teacher=True)
    streamed_batch = collator(streamed)
    map_style_batch = collator([mapped[row["row_id"]] for row in streamed])
    assert set(streamed_batch) - {"row_ids"} == set(map_style_batch)  # streamed rows are logged by (corpus, row id)
    assert "cached_teacher_ids" in map_style_batch
    for key, value in map_style_batch.items():
        assert torch.equal(torch.as_tensor(streamed_batch[key]), torch.as_tensor(value)), key


def test_streamed_training_reads_the_cached_teacher(
    tiny_checkpoints, responsive_llm, small_cache, monkeypatch, tmp_path
):
    """One step on every row (one batch): streamed with --teacher auto, the step reads the cached teacher (no
    teacher forward) and its loss is the map-style run's, up to float32 summation order (the stream brings the same
    rows in another order within the batch: relative 1e-5); the model card says which teacher it learnt from."""

    def no_live_teacher(*args, **kwargs):
        raise AssertionError("the live teacher ran")

    monkeypatch.setattr(BlspTrainer, "teacher_logits", no_live_teacher)
    objective = ("--loss", "kl", "--kl_temperature", str(TEMPERATURE))
    losses = {}
    for name, flags in (("map_style", ("--teacher", "cached")), ("streamed", ("--teacher", "auto", "--streaming"))):
        output_dir = str(tmp_path / name)
        train_adapter.main(
            model_flags(tiny_checkpoints, responsive_llm) + run_flags(small_cache, output_dir, 1, *objective, *flags)
        )
        losses[name] = logged_losses(output_dir)
        with open(os.path.join(output_dir, "README.md")) as file:
            assert f"| teacher | cached (top-{SMALL_K}, temperature {TEMPERATURE}, from step 1) |" in file.read()
    assert len(losses["streamed"]) == 1
    assert losses["streamed"] == pytest.approx(losses["map_style"], rel=1e-5, abs=0)


def without_teacher(output_dir: str, copy_dir: str) -> str:
    """A copy of a text-only step 1 output as step 1 writes it without --teacher_top_k."""
    shutil.copytree(output_dir, copy_dir)
    data = os.path.join(copy_dir, "data")
    for name in os.listdir(data):
        table = pq.read_table(os.path.join(data, name)).drop_columns([TEACHER_IDS, TEACHER_LOGPROBS])
        pq.write_table(table.replace_schema_metadata(None), os.path.join(data, name))
    with open(os.path.join(copy_dir, CONTINUATIONS_METADATA_FILE)) as file:
        settings = json.load(file)
    with open(os.path.join(copy_dir, CONTINUATIONS_METADATA_FILE), "w") as file:
        json.dump({**settings, "teacher_top_k": 0, "teacher_temperature": None}, file)
    return copy_dir


def test_mixed_datasets_stream_the_teacher_as_map_style_does(
    small_cache, full_cache, tiny_checkpoints, responsive_llm, tmp_path
):
    """Datasets of which only some hold a cached teacher, or hold them of different top-k: streamed as map-style,
    their rows carry none (so --teacher auto runs the live teacher) and --teacher cached says why it cannot."""
    uncached = without_teacher(small_cache, str(tmp_path / "uncached"))
    for caches in ([small_cache, uncached], [small_cache, full_cache]):
        streamed, mapped = streamed_and_map_style(caches, str(tmp_path))
        assert streamed and not any(TEACHER_IDS in row for row in streamed + mapped)
    flags = ("--loss", "kl", "--kl_temperature", str(TEMPERATURE), "--streaming", "--teacher", "cached")
    with pytest.raises(ValueError, match="not every dataset holds a cached teacher of the same top-k"):
        train_adapter.main(
            model_flags(tiny_checkpoints, responsive_llm)
            + run_flags(small_cache, str(tmp_path / "model"), 1, *flags, "--dataset_name", small_cache, uncached)
        )
