#!/usr/bin/env python
"""Corpus scale: step 1 reading transcripts only vs reading the audio, step 2's memory vs corpus size, and step 2's
throughput streaming vs map-style, each against a baseline measured in the same run.

    OMP_NUM_THREADS=1 python -m bench.scale           # tiny random models, clips the repository ships, CPU

Rows printed:
- step 1 on a parquet corpus (`--num_rows` rows, audio embedded), text-only (the default) vs with `--check_audio
  --embed_audio`, which reads and decodes every clip and writes a copy, as step 1 did before: rows/s of `main()`,
  bytes it read (`rchar` of /proc/self/io over `main()`, the model's loading included in both) and output bytes;
- step 2 `--streaming` peak RSS for the same number of steps on 2,000 vs 20,000 rows (target: within 10%);
- step 2 training samples/s, `--streaming` (durations from clip headers, and from a `duration` column) vs
  map-style on the same 2,000 rows (target: at least 0.9x).
Each run is a fresh process with its own datasets cache.
"""

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
from statistics import median

import pyarrow as pa
import pyarrow.parquet as pq
import soundfile

from tests.helpers.speech import shipped_clips
from tests.helpers.tiny_models import build_tiny_checkpoints

RUN = """
import json, resource, sys, time
import {module}
def rchar():
    return int(dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())["rchar"])
start, read_before = time.perf_counter(), rchar()
{module}.main(sys.argv[1:])
seconds, read = time.perf_counter() - start, rchar() - read_before
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print("BENCH " + json.dumps({{"seconds": seconds, "rchar": read, "peak_rss": peak}}))
"""


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_rows", type=int, default=2000, help="Rows of step 1's corpus.")
    parser.add_argument("--small_rows", type=int, default=2000, help="Step 2's smaller corpus.")
    parser.add_argument("--large_rows", type=int, default=20000, help="Step 2's larger corpus.")
    parser.add_argument("--max_steps", type=int, default=100, help="Step 2's optimizer steps (batches of 8).")
    parser.add_argument("--repeats", type=int, default=3, help="Interleaved repeats of step 2's throughput runs.")
    parser.add_argument("--parts", nargs="+", default=["step1", "step2"], choices=["step1", "step2"])
    return parser.parse_args()


def write_shards(
    directory: str, num_rows: int, continuations: bool, rows_per_shard: int = 1000, durations: bool = False
) -> str:
    """Parquet shards `data/train-*.parquet` cycling over the shipped clips: `audio` (bytes) and `text`, and with
    `continuations` also `row_id` and `continuation` (step 1's `--embed_audio` output, written directly); with
    `durations` also the clips' real durations in a `duration` column."""
    clips = shipped_clips()
    seconds = [soundfile.info(io.BytesIO(clip["bytes"])).duration for clip in clips]
    audio_type = pa.struct({"bytes": pa.binary(), "path": pa.string()})
    num_shards = -(-num_rows // rows_per_shard)
    os.makedirs(os.path.join(directory, "data"), exist_ok=True)
    for shard in range(num_shards):
        ids = range(shard * rows_per_shard, min(num_rows, (shard + 1) * rows_per_shard))
        columns = {
            "audio": pa.array(
                [{"bytes": clips[i % 8]["bytes"], "path": clips[i % 8]["file_name"]} for i in ids], audio_type
            ),
            "text": [f"{clips[i % 8]['text']} {i}" for i in ids],
        }
        if continuations:
            columns = {"row_id": list(ids), **columns, "continuation": [f"and then {i}" for i in ids]}
        if durations:
            columns["duration"] = [seconds[i % 8] for i in ids]
        path = os.path.join(directory, "data", f"train-{shard:05d}-of-{num_shards:05d}.parquet")
        pq.write_table(pa.table(columns), path, row_group_size=100, use_dictionary=["text"])
    if continuations:
        with open(os.path.join(directory, "blsp_continuations.json"), "w") as file:
            json.dump(
                {"instruction": "Continue the following text in a coherent and engaging style.", "source": None}, file
            )
    return directory


def run(module: str, flags: list[str], work: str, name: str) -> dict:
    """`module.main(flags)` in a fresh process with its own datasets cache; its seconds, rchar and peak RSS."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": os.path.join(work, "cache", name)}
    result = subprocess.run(
        [sys.executable, "-c", RUN.format(module=module), *flags], env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.split("BENCH ")[-1])


def directory_bytes(directory: str) -> int:
    return sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(directory) for name in names)


def step1(models: dict, work: str, num_rows: int) -> None:
    corpus = write_shards(os.path.join(work, "corpus"), num_rows, continuations=False)
    flags = ["--dataset_name", corpus, "--llm_name_or_path", models["llama"], "--max_new_tokens", "8"]
    flags += ["--batch_size", "64"]
    corpus_bytes = directory_bytes(os.path.join(corpus, "data"))
    results = {}
    for name, extra in (("text_only", []), ("audio", ["--check_audio", "--embed_audio"])):
        output = os.path.join(work, f"step1_{name}")
        results[name] = run("generate_continuations", [*flags, *extra, "--output_dir", output], work, name)
        results[name]["output"] = directory_bytes(os.path.join(output, "data"))
    print(f"\nStep 1, {num_rows} rows, corpus {corpus_bytes / 1e6:.1f} MB of parquet\n")
    print("| run | rows/s | bytes read | output bytes | output / corpus |")
    print("|---|---:|---:|---:|---:|")
    for name, label in (("audio", "audio read, decoded, copied (before)"), ("text_only", "transcripts only (now)")):
        result = results[name]
        print(
            f"| {label} | {num_rows / result['seconds']:.0f} | {result['rchar'] / 1e6:.1f} MB | "
            f"{result['output'] / 1e6:.2f} MB | {result['output'] / corpus_bytes:.1%} |"
        )
    text, audio = results["text_only"], results["audio"]
    print(
        f"\ntext-only vs before: {audio['seconds'] / text['seconds']:.2f}x rows/s, "
        f"{text['rchar'] / audio['rchar']:.2f}x the bytes read"
    )


def train(flags: list[str], data: str, work: str, name: str, streaming: bool) -> dict:
    """One step 2 run: its seconds, rchar and peak RSS, and `train_samples_per_second` as `samples`."""
    output = os.path.join(work, f"model_{name}")
    extra = ["--streaming"] if streaming else []
    result = run("train_adapter", [*flags, *extra, "--dataset_name", data, "--output_dir", output], work, name)
    with open(os.path.join(output, "train_results.json")) as file:
        result["samples"] = json.load(file)["train_samples_per_second"]
    return result


def step2(models: dict, work: str, small: int, large: int, max_steps: int, repeats: int) -> None:
    flags = ["--speech_encoder_name_or_path", models["whisper"], "--llm_name_or_path", models["llama"]]
    flags += ["--max_steps", str(max_steps), "--per_device_train_batch_size", "8", "--report_to", "none"]
    flags += ["--save_strategy", "no", "--learning_rate", "1e-3"]
    data = {rows: write_shards(os.path.join(work, f"cont_{rows}"), rows, continuations=True) for rows in (small, large)}
    data["duration"] = write_shards(os.path.join(work, "cont_duration"), small, continuations=True, durations=True)
    runs = {  # (data, streaming); interleaved `repeats` times so that a change in the machine's load hits them all
        "stream": (data[small], True),
        "stream_duration": (data["duration"], True),
        "map": (data[small], False),
    }
    results = {key: [] for key in runs}
    for repeat in range(repeats):
        for key, (dataset, streaming) in runs.items():
            results[key].append(train(flags, dataset, work, f"{key}_{repeat}", streaming))
    large_run = train(flags, data[large], work, "stream_large", streaming=True)
    print(f"\nStep 2, {max_steps} steps of 8 clips, {repeats} interleaved repeats (medians)\n")
    print("| run | peak RSS | train samples/s | samples/s end to end |")
    print("|---|---:|---:|---:|")
    labels = {
        "stream": f"streaming, {small} rows (durations from clip headers)",
        "stream_duration": f"streaming, {small} rows with a duration column",
        "map": f"map-style, {small} rows",
    }
    for key, label in labels.items():
        rss = median([result["peak_rss"] for result in results[key]])
        samples = median([result["samples"] for result in results[key]])
        end_to_end = median([max_steps * 8 / result["seconds"] for result in results[key]])
        print(f"| {label} | {rss / 2**20:.0f} MiB | {samples:.1f} | {end_to_end:.1f} |")
    print(f"| streaming, {large} rows | {large_run['peak_rss'] / 2**20:.0f} MiB | {large_run['samples']:.1f} | |")
    small_rss = median([result["peak_rss"] for result in results["stream"]])
    print(f"\npeak RSS {large} vs {small} rows: {large_run['peak_rss'] / small_rss:.3f}x (target: within 10%)")
    for key in ("stream", "stream_duration"):
        ratios = [ours["samples"] / map_style["samples"] for ours, map_style in zip(results[key], results["map"])]
        listed = ", ".join(f"{ratio:.2f}" for ratio in ratios)
        print(f"train samples/s {labels[key]} vs map-style: median {median(ratios):.2f}x ({listed}; target 0.9x)")
    ratios = [map_style["seconds"] / ours["seconds"] for ours, map_style in zip(results["stream"], results["map"])]
    print(f"end to end (data preparation, model loading, training): median {median(ratios):.2f}x")


def main():
    args = parse_arguments()
    work = tempfile.mkdtemp(prefix="bench_scale_")
    models = build_tiny_checkpoints(os.path.join(work, "models"))
    if "step1" in args.parts:
        step1(models, work, args.num_rows)
    if "step2" in args.parts:
        step2(models, work, args.small_rows, args.large_rows, args.max_steps, args.repeats)


if __name__ == "__main__":
    main()
