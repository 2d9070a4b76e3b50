"""Corpus scale: step 1 reads transcripts only (no audio over HTTP), streams, and writes no copy of the audio; step 2
finds each clip again by row id, or trains from a self-contained `--embed_audio` dataset."""

import itertools
import json
import os
import shutil
import subprocess
import sys
from collections import Counter

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from datasets import Audio, Dataset, load_dataset

import generate_continuations
import train_adapter
from blsp_steps import streaming, training_data
from blsp_steps.corpora import CorpusArguments, open_corpus
from processing_blsp import load_audio
from tests.helpers.hub_server import HubHandler
from tests.helpers.launching import two_process_launch
from tests.helpers.speech import shipped_clips

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "generate_continuations.py")
NUM_ROWS, NUM_SHARDS, ROWS_PER_GROUP = 2000, 2, 100


def build_parquet_corpus(
    directory: str, num_rows: int = NUM_ROWS, num_shards: int = NUM_SHARDS, duration_column: bool = False
) -> str:
    """Parquet shards `data/train-*.parquet` of `num_rows` rows (`audio` with embedded bytes, `text`) cycling over
    eight shipped clips, in row groups of 100; transcripts carry their row number so that every row differs.
    `duration_column` adds a `duration` of row number + 0.5 seconds: not the clips' real lengths, so that what
    reads it is told apart from what reads the clips."""
    clips = shipped_clips(8)
    rows_per_shard = num_rows // num_shards
    os.makedirs(os.path.join(directory, "data"), exist_ok=True)
    for shard in range(num_shards):
        row_ids = range(shard * rows_per_shard, (shard + 1) * rows_per_shard)
        columns = {
            "audio": [{"bytes": clips[i % 8]["bytes"], "path": clips[i % 8]["file_name"]} for i in row_ids],
            "text": [f"{clips[i % 8]['text']} {i}" for i in row_ids],
        }
        if duration_column:
            columns["duration"] = [i + 0.5 for i in row_ids]
        path = os.path.join(directory, "data", f"train-{shard:05d}-of-{num_shards:05d}.parquet")
        dataset = Dataset.from_dict(columns).cast_column("audio", Audio(decode=False))
        pq.write_table(dataset.data.table, path, row_group_size=ROWS_PER_GROUP, use_dictionary=["text"])
    return directory


@pytest.fixture(scope="module")
def parquet_corpus(tmp_path_factory) -> str:
    return build_parquet_corpus(str(tmp_path_factory.mktemp("scale_corpus")))


def directory_bytes(directory: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(directory) for name in names)


def audio_byte_ranges(path: str) -> list[tuple[int, int]]:
    """[start, end) byte ranges of the audio column chunks of a parquet file, from its footer."""
    metadata = pq.ParquetFile(path).metadata
    ranges = []
    for group in range(metadata.num_row_groups):
        for column in range(metadata.num_columns):
            chunk = metadata.row_group(group).column(column)
            if chunk.path_in_schema.startswith("audio"):
                start = chunk.dictionary_page_offset or chunk.data_page_offset
                ranges.append((start, start + chunk.total_compressed_size))
    return ranges


class ServedBytes:
    """Records every GET the local Hub answers: path, byte range and body size."""

    def __init__(self, monkeypatch):
        self.requests = []
        write_response = HubHandler.write_response

        def counting(handler):
            if handler.command == "GET" and handler.response:
                self.requests.append((handler.path, handler.headers.get("Range"), len(handler.response[2])))
            write_response(handler)

        monkeypatch.setattr(HubHandler, "write_response", counting)

    def of_file(self, name: str) -> list[tuple[int, int]]:
        """[start, end) of every body served from files named `name`."""
        served = []
        for path, byte_range, size in self.requests:
            if path.endswith("/" + name):
                start = int(byte_range.split("=")[1].split("-")[0]) if byte_range else 0
                served.append((start, start + size))
        return served


def step1_flags(dataset_name: str, llm: str, output_dir, *flags: str) -> list[str]:
    return ["--dataset_name", dataset_name, "--llm_name_or_path", llm, "--output_dir", str(output_dir)] + [
        "--max_new_tokens",
        "4",
        "--batch_size",
        "64",
        *flags,
    ]


def output_rows(output_dir) -> list[dict]:
    return list(load_dataset(str(output_dir), split="train"))


def test_step1_reads_no_audio_over_http_and_writes_no_copy(
    parquet_corpus,
    tiny_checkpoints,
    hub_env,  # noqa: F811
    monkeypatch,
    tmp_path,
):
    from huggingface_hub import HfApi

    HfApi().create_repo("alice/scale-corpus", repo_type="dataset")
    HfApi().upload_folder(repo_id="alice/scale-corpus", repo_type="dataset", folder_path=parquet_corpus)
    served = ServedBytes(monkeypatch)
    flags = step1_flags("alice/scale-corpus", tiny_checkpoints["llama"], tmp_path / "out")
    summary = generate_continuations.main(flags)
    assert (summary["accepted"], summary["rejected"]) == (NUM_ROWS, 0)

    corpus_bytes = directory_bytes(os.path.join(parquet_corpus, "data"))
    output_bytes = directory_bytes(os.path.join(tmp_path / "out", "data"))
    assert output_bytes < 0.02 * corpus_bytes, (output_bytes, corpus_bytes)
    total_served = 0
    for name in sorted(os.listdir(os.path.join(parquet_corpus, "data"))):
        local = os.path.join(parquet_corpus, "data", name)
        size, audio = os.path.getsize(local), audio_byte_ranges(local)
        for start, end in served.of_file(name):
            total_served += end - start
            if end == size:  # pyarrow's fixed 64 KiB read of the footer, at the end of the file
                assert end - start <= 65536
                continue
            overlap = sum(max(0, min(end, b) - max(start, a)) for a, b in audio)
            assert overlap <= 1, f"{overlap} audio bytes served in {start}-{end}"  # fsspec reads 1 byte ahead
    assert 0 < total_served < 0.02 * corpus_bytes, (total_served, corpus_bytes)
    rows = output_rows(tmp_path / "out")
    assert [row["row_id"] for row in rows] == list(range(NUM_ROWS))
    assert rows[5]["text"] == f"{shipped_clips(8)[5]['text']} 5"

    # step 2 finds the clips over HTTP, a parquet file per shard, numbered from the footers' row counts
    with open(tmp_path / "out" / "blsp_continuations.json") as file:
        source = CorpusArguments(**json.load(file)["source"])
    shards = streaming.parquet_shards(source)
    assert [shard["offset"] for shard in shards] == [0, NUM_ROWS // NUM_SHARDS]
    step1 = load_dataset(str(tmp_path / "out"), split="train", streaming=True)
    continuations, _ = streaming.read_continuations(step1, [])
    first = next(streaming.joined_shard_rows(shards[1:], continuations, "duration"))
    assert (first["row_id"], first["text"]) == (NUM_ROWS // NUM_SHARDS, rows[NUM_ROWS // NUM_SHARDS]["text"])
    assert first["audio"]["bytes"] == shipped_clips(8)[(NUM_ROWS // NUM_SHARDS) % 8]["bytes"]


STEP1_FLAGS = ["--max_samples", "60", "--batch_size", "8", "--length_grouping_rows", "16"]


@pytest.fixture(scope="module")
def map_style_rows(parquet_corpus, tiny_checkpoints, tmp_path_factory) -> list[dict]:
    """Step 1's map-style output on the corpus's first 60 rows: what every streaming run must reproduce."""
    output_dir = tmp_path_factory.mktemp("map_style")
    generate_continuations.main(step1_flags(parquet_corpus, tiny_checkpoints["llama"], output_dir, *STEP1_FLAGS))
    rows = output_rows(output_dir)
    assert [row["row_id"] for row in rows] == list(range(60))
    return rows


def test_streaming_in_two_processes_equals_map_style_and_resumes(
    parquet_corpus, map_style_rows, tiny_checkpoints, tmp_path
):
    flags, llm = STEP1_FLAGS, tiny_checkpoints["llama"]
    launch = two_process_launch()
    env = {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    streaming = step1_flags(parquet_corpus, llm, tmp_path / "stream", *flags, "--streaming")
    two = subprocess.run([*launch, SCRIPT, *streaming], env=env, capture_output=True, text=True)
    assert two.returncode == 0, two.stderr[-3000:]
    parts = [tmp_path / "stream" / "parts" / f"continuations-0000{rank}.jsonl" for rank in (0, 1)]
    assert all(part.stat().st_size > 0 for part in parts)
    assert output_rows(tmp_path / "stream") == map_style_rows

    # killed during the final merge: the rerun generates nothing, writes the output and exits
    shutil.rmtree(tmp_path / "stream" / "data")
    rerun = generate_continuations.main(streaming)
    assert rerun["generated_rows_this_run"] == 0 and rerun["accepted"] == 60
    assert output_rows(tmp_path / "stream") == map_style_rows


KILL_AFTER_TWO_BATCHES = """
import os, signal, sys
import generate_continuations
from blsp_steps import rejects
appends = 0
append = rejects.JsonlLog.append
def append_then_die(self, records):
    global appends
    if records and "continuations" in self.file.name:
        appends += 1
        if appends == 3:
            os.kill(os.getpid(), signal.SIGKILL)
    append(self, records)
rejects.JsonlLog.append = append_then_die
generate_continuations.main(sys.argv[1:])
"""


def test_killed_streaming_run_resumes_to_the_uninterrupted_result(
    parquet_corpus, map_style_rows, tiny_checkpoints, tmp_path
):
    resumed = step1_flags(parquet_corpus, tiny_checkpoints["llama"], tmp_path / "resumed", *STEP1_FLAGS, "--streaming")
    env = {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_TWO_BATCHES, *resumed], env=env, capture_output=True)
    assert killed.returncode == -9, killed.stderr[-3000:]
    summary = generate_continuations.main(resumed)
    assert summary["generated_rows_this_run"] == 60 - 16
    assert output_rows(tmp_path / "resumed") == map_style_rows  # == an uninterrupted run (streaming == map-style)
    part_ids = [
        record["row_id"] for record in generate_continuations.read_parts(str(tmp_path / "resumed"), "continuations")
    ]
    assert sorted(part_ids) == list(range(60))  # every row written exactly once


HUB_TRAIN = """
import sys
import train_adapter
train_adapter.main(sys.argv[1:])
print("TRAINED")
"""


def test_step2_joins_the_audio_back_or_trains_from_the_embedded_copy(
    tiny_checkpoints,
    hub_env,  # noqa: F811
    tmp_path,
):
    corpus = build_parquet_corpus(str(tmp_path / "corpus"), num_rows=24, num_shards=2)
    llm = tiny_checkpoints["llama"]
    generate_continuations.main(step1_flags(corpus, llm, tmp_path / "text_only"))
    push = ["--embed_audio", "--push_to_hub", "--hub_dataset_id", "alice/embedded"]
    generate_continuations.main(step1_flags(corpus, llm, tmp_path / "embedded", *push))
    env = {**hub_env.subprocess_env(tmp_path / "fresh_hf_home"), "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"}

    data_args = train_adapter.DataArguments(dataset_name=[str(tmp_path / "text_only")])
    joined, metadatas = training_data.prepare_dataset(data_args.dataset_name, "train", data_args, {"ce"}, "length")
    data_args = train_adapter.DataArguments(dataset_name=[str(tmp_path / "embedded")])
    copied, _ = training_data.prepare_dataset(data_args.dataset_name, "train", data_args, {"ce"}, "length")
    assert metadatas[0]["source"]["dataset_name"] == corpus
    source = open_corpus(CorpusArguments(dataset_name=corpus))
    assert len(joined) == len(copied) == 24
    for index in (0, 9, 23):
        expected = load_audio(source[index]["audio"], 16000)
        assert np.array_equal(load_audio(joined[index]["audio"], 16000), expected)
        assert np.array_equal(load_audio(copied[index]["audio"], 16000), expected)
    assert joined.remove_columns("audio").to_list() == copied.remove_columns("audio").to_list()
    assert directory_bytes(str(tmp_path / "embedded" / "data")) > directory_bytes(str(tmp_path / "text_only" / "data"))

    shutil.rmtree(corpus)  # the pushed dataset holds its audio
    flags = ["--speech_encoder_name_or_path", tiny_checkpoints["whisper"], "--llm_name_or_path", llm]
    flags += ["--dataset_name", "alice/embedded", "--output_dir", str(tmp_path / "model"), "--max_steps", "1"]
    flags += ["--per_device_train_batch_size", "4", "--report_to", "none", "--save_strategy", "no"]
    trained = subprocess.run(
        [sys.executable, "-c", HUB_TRAIN, *flags], env=env, capture_output=True, text=True, cwd=str(tmp_path)
    )
    assert trained.returncode == 0 and "TRAINED" in trained.stdout, trained.stderr[-3000:]


def test_one_dataset_flag_name_with_the_old_one_as_alias(tmp_path):
    model = ["--speech_encoder_name_or_path", "w", "--llm_name_or_path", "l", "--output_dir", str(tmp_path)]
    for flag in ("--dataset_name", "--dataset_name_or_path"):
        _, data_args, _, _ = train_adapter.parse_arguments([*model, flag, "a", "b"])
        assert data_args.dataset_name == ["a", "b"]
    settings = {"speech_encoder_name_or_path": "w", "llm_name_or_path": "l", "output_dir": str(tmp_path)}
    (tmp_path / "old.yaml").write_text(yaml.safe_dump({**settings, "dataset_name_or_path": "c"}))
    _, data_args, _, _ = train_adapter.parse_arguments([str(tmp_path / "old.yaml")])
    assert data_args.dataset_name == ["c"]
    corpus_args, _ = generate_continuations.parse_arguments(
        ["--dataset_name", "d", "--llm_name_or_path", "l"]
        + [
            "--output_dir",
            str(tmp_path),
        ]
    )
    assert corpus_args.dataset_name == "d"


def trained_rows(output_dir) -> list[dict]:
    """Every process's log of trained rows: step and (corpus, row_id) pairs."""
    records = []
    for name in sorted(os.listdir(output_dir)):
        if name.startswith("trained_rows-"):
            with open(os.path.join(output_dir, name)) as file:
                records.extend({**json.loads(line), "process": name} for line in file)
    return records


def step2_flags(tiny_checkpoints, llm: str, output_dir, *datasets: str) -> list[str]:
    flags = ["--speech_encoder_name_or_path", tiny_checkpoints["whisper"], "--llm_name_or_path", llm]
    flags += ["--dataset_name", *datasets, "--output_dir", str(output_dir), "--streaming", "--log_trained_rows"]
    return flags + ["--report_to", "none", "--save_strategy", "no", "--logging_steps", "1", "--seed", "0"]


@pytest.fixture(scope="module")
def step1_outputs(tiny_checkpoints, tmp_path_factory) -> dict[str, str]:
    """Step 1 on a 16-row parquet corpus in two shards, with a `duration` column: text-only output, an --embed_audio
    one in two shards, and a copy of the latter with a `duration` column."""
    root = tmp_path_factory.mktemp("step1_outputs")
    corpus = build_parquet_corpus(str(root / "corpus"), num_rows=16, num_shards=2, duration_column=True)
    outputs = {"text_only": str(root / "text_only"), "embedded": str(root / "embedded")}
    generate_continuations.main(step1_flags(corpus, tiny_checkpoints["llama"], outputs["text_only"]))
    embed = ["--embed_audio", "--rows_per_shard", "8"]
    generate_continuations.main(step1_flags(corpus, tiny_checkpoints["llama"], outputs["embedded"], *embed))
    outputs["embedded_with_duration"] = with_duration_column(outputs["embedded"], str(root / "embedded_duration"))
    return outputs


def with_duration_column(output_dir: str, copy_dir: str) -> str:
    """A copy of an --embed_audio output whose shards have a `duration` column of row id + 0.5 seconds."""
    shutil.copytree(output_dir, copy_dir)
    for root, _, names in os.walk(copy_dir):
        for name in (name for name in names if name.endswith(".parquet")):
            table = pq.read_table(os.path.join(root, name))
            durations = [row_id + 0.5 for row_id in table.column("row_id").to_pylist()]
            pq.write_table(table.append_column("duration", [durations]), os.path.join(root, name))
    return copy_dir


def test_streaming_step2_joins_audio_by_row_id_and_loss_falls(
    step1_outputs,
    tiny_checkpoints,
    responsive_llm,  # noqa: F811
    monkeypatch,
    tmp_path,
):
    monkeypatch.setattr(streaming, "clip_seconds", no_header_read)  # durations come from the source's column
    flags = step2_flags(tiny_checkpoints, responsive_llm, tmp_path / "model", step1_outputs["text_only"])
    flags += ["--max_steps", "6", "--per_device_train_batch_size", "16", "--learning_rate", "1e-2"]
    train_adapter.main([*flags, "--lr_scheduler_type", "constant", "--max_audio_seconds", "30"])
    with open(tmp_path / "model" / "trainer_state.json") as file:
        losses = [entry["loss"] for entry in json.load(file)["log_history"] if "loss" in entry]
    assert len(losses) == 6 and max(losses[-3:]) < 0.9 * losses[0], losses
    steps = trained_rows(tmp_path / "model")
    assert [record["step"] for record in steps] == list(range(1, 7))
    assert all(sorted(row_id for _, row_id in record["rows"]) == list(range(16)) for record in steps)


def no_header_read(audio: dict) -> float:
    raise AssertionError("a clip header was read for its duration although the corpus has a duration column")


def test_streamed_durations_come_from_the_duration_column(step1_outputs, monkeypatch, tmp_path):
    monkeypatch.setattr(streaming, "clip_seconds", no_header_read)
    training_args = train_adapter.BlspTrainingArguments(output_dir=str(tmp_path / "model"), report_to="none")
    for name in ("text_only", "embedded_with_duration"):
        data_args = train_adapter.DataArguments(
            dataset_name=[step1_outputs[name]], streaming=True, max_audio_seconds=7.6, length_grouping_rows=16
        )
        stream, _ = training_data.stream_datasets(data_args, training_args)
        rows = list(stream)
        # the column's durations (row id + 0.5 s), not the clips' real ones, select and order the rows
        assert [row["row_id"] for row in rows] == [7, 6, 5, 4, 3, 2, 1, 0], name
        assert [row["seconds"] for row in rows] == [row_id + 0.5 for row_id in range(7, -1, -1)]
    data_args = train_adapter.DataArguments(dataset_name=[step1_outputs["embedded_with_duration"]])
    dataset, _ = training_data.prepare_dataset(data_args.dataset_name, "train", data_args, {"ce"}, "length")
    assert dataset["length"] == [1000 * row_id + 500 for row_id in range(16)]  # map-style reads it too


def test_streaming_step2_processes_read_their_own_source_shards(step1_outputs, tiny_checkpoints, tmp_path):
    """Two processes on a text-only step 1 output: each streams its own parquet file of the source corpus."""
    launch = two_process_launch()
    flags = step2_flags(tiny_checkpoints, tiny_checkpoints["llama"], tmp_path / "model", step1_outputs["text_only"])
    flags += ["--max_steps", "2", "--per_device_train_batch_size", "4", "--shuffle_buffer_size", "4", "--use_cpu"]
    env = {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    two = subprocess.run([*launch, os.path.join(ROOT, "train_adapter.py"), *flags], env=env, capture_output=True)
    assert two.returncode == 0, two.stderr[-3000:]
    by_process = {}
    for record in trained_rows(tmp_path / "model"):
        by_process.setdefault(record["process"], []).extend(row_id for _, row_id in record["rows"])
    first, second = by_process.values()
    assert sorted(first) == list(range(8)) and sorted(second) == list(range(8, 16))  # a source file each, all once


def embedded_output(directory: str, num_rows: int) -> str:
    """An --embed_audio step 1 output in one shard, written directly: the corpus's rows plus `row_id` and a
    `continuation`."""
    build_parquet_corpus(directory, num_rows=num_rows, num_shards=1)
    for name in os.listdir(os.path.join(directory, "data")):
        path = os.path.join(directory, "data", name)
        table = pq.read_table(path)
        table = table.add_column(0, "row_id", [list(range(table.num_rows))])
        table = table.append_column("continuation", [[f"and then {i}" for i in range(table.num_rows)]])
        pq.write_table(table, path)
    return directory


def test_streamed_corpora_follow_their_weights(tmp_path):
    outputs = [embedded_output(str(tmp_path / name), rows) for name, rows in (("big", 400), ("small", 200))]
    data_args = train_adapter.DataArguments(
        dataset_name=outputs, streaming=True, dataset_weights=[3, 1], max_audio_seconds=3.0
    )
    training_args = train_adapter.BlspTrainingArguments(output_dir=str(tmp_path / "model"), report_to="none")
    stream, _ = training_data.stream_datasets(data_args, training_args)
    rows = list(itertools.islice(stream, 400))
    counts = Counter(row["corpus"] for row in rows)
    assert 2.4 < counts[0] / counts[1] < 3.6, counts
    seconds = [streaming.clip_seconds(row["audio"]) for row in rows]
    assert max(seconds) <= 3.0 and len(rows) == 400  # one of the eight clips (3.6 s) is always skipped


KILL_AT_THIRD_STEP = """
import os, signal, sys
import train_adapter
training_step = train_adapter.BlspTrainer.training_step
def die_at_third_step(self, *args, **kwargs):
    if self.state.global_step == 2:  # checkpoint-2 is saved: kill -9 before step 3 trains
        os.kill(os.getpid(), signal.SIGKILL)
    return training_step(self, *args, **kwargs)
train_adapter.BlspTrainer.training_step = die_at_third_step
train_adapter.main(sys.argv[1:])
"""


def test_streaming_step2_resumes_mid_stream_without_repeating_rows(step1_outputs, tiny_checkpoints, tmp_path):
    flags = step2_flags(tiny_checkpoints, tiny_checkpoints["llama"], tmp_path / "model", step1_outputs["embedded"])
    flags += ["--max_steps", "4", "--per_device_train_batch_size", "4", "--shuffle_buffer_size", "8"]
    flags = [flag if flag != "no" else "steps" for flag in flags] + ["--save_steps", "2"]  # --save_strategy steps
    env = {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, "-c", KILL_AT_THIRD_STEP, *flags], env=env, capture_output=True)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert [record["step"] for record in trained_rows(tmp_path / "model")] == [1, 2]
    train_adapter.main([*flags, "--resume_from_checkpoint", str(tmp_path / "model" / "checkpoint-2")])
    records = trained_rows(tmp_path / "model")
    assert [record["step"] for record in records] == [1, 2, 3, 4]
    assert sorted(row_id for record in records for _, row_id in record["rows"]) == list(range(16))
