#!/usr/bin/env python
"""Training samples/s and peak memory of step 2: the BLSP recipe as published against train_adapter.py, one run.

    python -m bench.train_step                         # whisper-small + Qwen2.5-0.5B shapes, random weights
    python -m bench.train_step --repeats 2             # best of 2 interleaved repeats (a shared machine)
    python -m bench.train_step --num_clips 8 --llm_layers 4
    python -m bench.train_step --compare teacher padding precision   # ours against ours, one option changed

Both runs train the adapter (cross-entropy on the continuation) through `Trainer.train` on the same clips (3 to
20 s, evenly spread, corpus order shuffled), decoded in the collator, batches of `--batch_size`, one pass:
- published: every clip padded to 30 s, as the original feature extractor did: the Whisper encoder runs on 30 s
  and the LLM gets 30 s of speech positions (188; the original masked the padded ones, which costs the same);
  batches in corpus order (unsorted); logits over the whole sequence (the stock `Trainer` loss);
- ours: `BlspTrainer` with the encoder on the batch's longest clip (`"longest"`), batches of similar duration
  (the clips sorted by duration, as the length-grouped sampler orders each mega-batch), logits on the response
  positions only.
`--compare` picks the pairs (default `recipe`, the comparison above); each of the others runs ours twice, the
first its baseline:
- teacher: `--loss kl` with the live teacher (the LLM reads the transcript at every step) vs step 1's cached top-k
  teacher (`--teacher cached`; a random top-`--top_k` teacher written into the corpus, as step 1 stores it);
- padding: cross-entropy on padded batches vs `--padding_free` (each batch packed into one row);
- precision: fp32 vs bf16 autocast (`--bf16`; on CPU, where the first run of the other pairs is fp32).
Each run goes in its own process (a warm-up step, then the timed pass) so that peak memory is its own: peak RSS on
CPU (also shown above the RSS after the model is built), `torch.cuda.max_memory_allocated` on GPU.
"""

import argparse
import json
import os
import random
import resource
import tempfile
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np
import soundfile
import torch
from datasets import Audio, Dataset
from transformers import Qwen2Config, Trainer, WhisperConfig, WhisperFeatureExtractor

import train_adapter
from blsp_steps import (
    objectives,
    training,
    training_data,
)
from blsp_steps.corpora import TEACHER_IDS, TEACHER_LOGPROBS
from configuration_blsp import BlspConfig, add_speech_token
from modeling_blsp import BlspForConditionalGeneration
from processing_blsp import BlspProcessor
from tests.helpers.speech import SENTENCES
from tests.helpers.tiny_models import build_tokenizer

SAMPLING_RATE = 16000
CONTINUATION_WORDS = 24  # about 50 tokens of the bench tokenizer, as 40 words (BLSP's limit) make for a Llama one
WHISPER_SMALL = dict(d_model=768, encoder_layers=12, encoder_attention_heads=12, encoder_ffn_dim=3072, num_mel_bins=80)
QWEN25_05B = dict(
    hidden_size=896,
    intermediate_size=4864,
    num_attention_heads=14,
    num_key_value_heads=2,
    vocab_size=151936,
    max_position_embeddings=32768,
    tie_word_embeddings=True,
)


class PublishedRecipeCollator(training.SpeechPromptCollator):
    """The original recipe's inputs: each clip zero-padded to 30 s; no bookkeeping key for the stock `Trainer`."""

    def usable_rows(self, rows: list[dict]) -> tuple[list[dict], list]:
        kept, clips = super().usable_rows(rows)
        window = self.processor.feature_extractor.n_samples
        return kept, [np.pad(clip, (0, window - len(clip))) for clip in clips]

    def __call__(self, rows: list[dict]) -> dict:
        batch = super().__call__(rows)
        batch.pop(training.SKIPPED_ROWS_KEY)
        return batch


OURS = {
    "encoder_padding": "longest",
    "sorted": True,
    "trainer": training.BlspTrainer,
    "collator": training.SpeechPromptCollator,
    "loss": "ce",
}
PUBLISHED = {**OURS, "encoder_padding": "max_length", "sorted": False, "trainer": Trainer}
PUBLISHED["collator"] = PublishedRecipeCollator
COMPARISONS = {  # each a baseline run, then the run compared with it
    "recipe": {"published": PUBLISHED, "ours": OURS},
    "teacher": {
        "live teacher": {**OURS, "loss": "kl", "teacher": "live"},
        "cached teacher": {**OURS, "loss": "kl", "teacher": "cached"},
    },
    "padding": {"padded": OURS, "padding-free": {**OURS, "padding_free": True}},
    "precision": {"fp32": {**OURS, "bf16": False}, "bf16": {**OURS, "bf16": True}},
}


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_clips", type=int, default=16, help="Clips, evenly spread over 3 to 20 s.")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--llm_layers", type=int, default=24, help="Decoder layers of the 0.5B-shaped LLM.")
    parser.add_argument("--bf16", action="store_true", help="bf16 mixed precision (GPU).")
    parser.add_argument("--repeats", type=int, default=1, help="Interleaved repeats of both runs; best kept.")
    parser.add_argument("--compare", nargs="+", choices=list(COMPARISONS), default=["recipe"], help="Pairs to run.")
    parser.add_argument("--top_k", type=int, default=64, help="Tokens of the cached teacher (--compare teacher).")
    return parser.parse_args()


def write_corpus(directory: str, num_clips: int, top_k: int = 0) -> str:
    """FLAC clips (tones with noise) of 3 to 20 s in shuffled order, as a step-1 dataset saved to disk; with `top_k`,
    a cached teacher as step 1 writes it: at each response token and EOS, `top_k` distinct random token ids and
    descending log-probabilities (float16) holding 90% of the mass."""
    os.makedirs(directory)
    durations = np.linspace(3.0, 20.0, num_clips)
    random.Random(0).shuffle(durations)
    generator = np.random.default_rng(0)
    records = {"row_id": [], "audio": [], "text": [], "continuation": []}
    for index, seconds in enumerate(durations):
        time = np.arange(int(seconds * SAMPLING_RATE)) / SAMPLING_RATE
        samples = 0.3 * np.sin(2 * np.pi * 220 * (1 + index % 5) * time) + 0.01 * generator.standard_normal(len(time))
        path = os.path.join(directory, f"clip_{index:03d}.flac")
        soundfile.write(path, samples.astype(np.float32), SAMPLING_RATE)
        words = " ".join(SENTENCES).split()
        records["row_id"].append(index)
        records["audio"].append({"path": path, "bytes": None})
        records["text"].append(" ".join(words[: int(2.5 * seconds)]))  # about 2.5 spoken words per second
        records["continuation"].append(" ".join(words[index : index + CONTINUATION_WORDS]))
    if top_k:
        tokenizer = build_tokenizer(chat=True)
        positions = [len(ids) + 1 for ids in tokenizer(records["continuation"], add_special_tokens=False)["input_ids"]]
        vocab_size = QWEN25_05B["vocab_size"]
        records[TEACHER_IDS] = [
            [generator.choice(vocab_size, top_k, replace=False).astype(np.int32) for _ in range(count)]
            for count in positions
        ]
        records[TEACHER_LOGPROBS] = [
            np.log(0.9 * -np.sort(-generator.dirichlet(np.ones(top_k), size=count), axis=-1)).astype(np.float16)
            for count in positions
        ]
    dataset = Dataset.from_dict(records).cast_column("audio", Audio(decode=False))
    dataset.save_to_disk(os.path.join(directory, "dataset"))
    return os.path.join(directory, "dataset")


def build_model_and_processor(encoder_padding: str, llm_layers: int):
    """Whisper-small encoder and a Qwen2.5-0.5B-shaped LLM, random weights (seeded: both runs get the same)."""
    tokenizer = build_tokenizer(chat=True)
    config = BlspConfig(
        speech_config=WhisperConfig(**WHISPER_SMALL),
        text_config=Qwen2Config(**QWEN25_05B, num_hidden_layers=llm_layers),
        encoder_padding=encoder_padding,
    )
    config.speech_token_id = add_speech_token(tokenizer, config.speech_token)
    torch.manual_seed(0)
    model = BlspForConditionalGeneration(config)
    training.select_trainable_parameters(model, train_speech_encoder=False)
    processor = BlspProcessor(
        WhisperFeatureExtractor(feature_size=80), tokenizer, speech_downsampling=config.speech_downsampling
    )
    return model, processor


def rss_mib() -> float:
    with open("/proc/self/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def train(run: dict, model, processor, dataset, bench: argparse.Namespace, output_dir: str, steps: int) -> dict:
    args = train_adapter.BlspTrainingArguments(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=bench.batch_size,
        train_sampling_strategy="sequential",
        learning_rate=5e-5,
        save_strategy="no",
        logging_strategy="no",
        report_to="none",
        disable_tqdm=True,
        bf16=run.get("bf16", bench.bf16),
        use_cpu=not torch.cuda.is_available(),
        loss=run["loss"],
        teacher=run.get("teacher", "auto"),
        padding_free=run.get("padding_free", False),
    )
    with_teacher = objectives.needs_teacher(args.loss_terms)
    collator = run["collator"](processor, with_teacher=with_teacher, cached_teacher=args.teacher == "cached")
    trainer = run["trainer"](model=model, args=args, data_collator=collator, train_dataset=dataset)
    return trainer.train().metrics


def run_one(comparison: str, name: str, dataset_path: str, bench: argparse.Namespace, work: str) -> dict:
    """One run in this (fresh) process: a warm-up step, then a timed pass over every clip."""
    run = COMPARISONS[comparison][name]
    model, processor = build_model_and_processor(run["encoder_padding"], bench.llm_layers)
    dataset, _ = training_data.prepare_dataset(
        [dataset_path], "train", train_adapter.DataArguments(dataset_name=[dataset_path]), {run["loss"]}, "length"
    )
    if run["sorted"]:
        dataset = dataset.sort("length", reverse=True)
    rss_model = rss_mib()
    if torch.cuda.is_available():
        model.cuda()
        torch.cuda.reset_peak_memory_stats()
    train(run, model, processor, dataset, bench, os.path.join(work, f"{comparison}_{name}_warmup"), steps=1)
    steps = len(dataset) // bench.batch_size
    metrics = train(run, model, processor, dataset, bench, os.path.join(work, f"{comparison}_{name}"), steps=steps)
    result = {
        "samples_per_second": steps * bench.batch_size / metrics["train_runtime"],
        "seconds": metrics["train_runtime"],
        "steps": steps,
        "peak_rss_mib": peak_rss_mib(),
        "peak_above_model_mib": peak_rss_mib() - rss_model,
    }
    if torch.cuda.is_available():
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def main():
    bench = parse_arguments()
    work = tempfile.mkdtemp(prefix="bench_train_step_")
    top_k = bench.top_k if "teacher" in bench.compare else 0
    dataset_path = write_corpus(os.path.join(work, "clips"), bench.num_clips, top_k)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads"
    print(f"\nwhisper-small encoder + Qwen2.5-0.5B-shaped LLM ({bench.llm_layers} layers), random weights; {device}")
    print(
        f"{bench.num_clips} clips of 3-20 s, batches of {bench.batch_size}, best of {bench.repeats} interleaved repeats"
    )
    for comparison in bench.compare:
        repeats = {name: [] for name in COMPARISONS[comparison]}
        for _ in range(bench.repeats):  # interleaved, best of each: a shared machine's load varies
            for name in repeats:
                with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
                    repeats[name].append(pool.submit(run_one, comparison, name, dataset_path, bench, work).result())
        report(
            comparison, {name: max(runs, key=lambda run: run["samples_per_second"]) for name, runs in repeats.items()}
        )


def report(comparison: str, results: dict):
    """The comparison's table (best repeat of each run) and the second run's ratios to the first."""
    (baseline_name, baseline), (name, compared) = results.items()
    memory_key = "peak_cuda_mib" if torch.cuda.is_available() else "peak_rss_mib"
    print(f"\n{comparison}: {compared['steps']} steps each\n")
    print("| run | samples/s | peak memory (MiB) | peak above model (MiB) |")
    print("|---|---:|---:|---:|")
    for run_name, result in results.items():
        above = f"{result['peak_above_model_mib']:.0f}" if memory_key == "peak_rss_mib" else "-"
        print(f"| {run_name} | {result['samples_per_second']:.3f} | {result[memory_key]:.0f} | {above} |")
    speed = compared["samples_per_second"] / baseline["samples_per_second"]
    memory = compared[memory_key] / baseline[memory_key]
    print(f"\n{name} / {baseline_name}: {speed:.2f}x samples/s, {memory:.2f}x peak memory")
    if memory_key == "peak_rss_mib":
        ratio = compared["peak_above_model_mib"] / baseline["peak_above_model_mib"]
        print(f"peak memory above the model: {ratio:.2f}x")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
