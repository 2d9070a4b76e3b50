#!/usr/bin/env python
"""Generated tokens per second of step 1 (generate_continuations.py) against two baselines, in one process.

    python -m bench.continuations                      # tiny random Llama, 256 espeak-ng clips, CPU
    python -m bench.continuations --llm_name_or_path ./llm --dataset_name ./corpus

Rows, in this order:
- the script: `generate_continuations.main` on the corpus; its own count over the generation loop (reading the
  transcripts, length-grouped left-padded batches of `--batch_size`, writing the parts);
- a plain per-row loop: `model.generate` on one prompt at a time;
- the original recipe: batches of 8 prompts in corpus order (unsorted), left-padded;
- the script's length-grouped batches alone, with the same `model.generate` loop as the baselines.
All three decode greedily, `--max_new_tokens` each, with the same prompts; the per-row loop's continuations are
compared with the script's. Each run is repeated (interleaved) and its best rate kept. On a small shared CPU, set
OMP_NUM_THREADS=1: with more threads than free cores, torch's spinning threads dominate the timings.
"""

import argparse
import json
import os
import tempfile
import time

import torch
from accelerate import PartialState
from transformers import AutoModelForCausalLM

import generate_continuations
from blsp_steps.continuations import until_eos
from blsp_steps.corpora import open_transcripts
from generate_continuations import build_prompts, length_grouped_batches, load_tokenizer
from tests.helpers.speech import SENTENCES, synthesize
from tests.helpers.tiny_models import save_tiny_llm


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm_name_or_path", help="The LLM (default: the tests' tiny random Llama, built here).")
    parser.add_argument("--dataset_name", help="A corpus for generate_continuations.py (default: espeak-ng clips).")
    parser.add_argument("--num_rows", type=int, default=256, help="Clips to synthesize (or rows to read).")
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=32, help="The script's batch size.")
    parser.add_argument("--repeats", type=int, default=3, help="Interleaved repeats of the three runs; best kept.")
    return parser.parse_args()


def synthesize_corpus(directory: str, num_rows: int) -> str:
    """`num_rows` espeak-ng clips whose transcripts are one to four sentences long, with an audiofolder metadata.csv."""
    os.makedirs(directory)
    lines = ["file_name,text"]
    for index in range(num_rows):
        text = " and ".join(SENTENCES[(index + offset) % len(SENTENCES)] for offset in range(1 + index % 4))
        synthesize(text, os.path.join(directory, f"clip_{index:04d}.flac"), speed=320)
        lines.append(f"clip_{index:04d}.flac,{text}")
    with open(os.path.join(directory, "metadata.csv"), "w") as file:
        file.write("\n".join(lines) + "\n")
    return directory


def generate_batches(model, tokenizer, batches: list[list[list[int]]], max_new_tokens: int) -> list[list[int]]:
    """Greedy `model.generate` on each left-padded batch of prompt ids; the new tokens of each prompt, up to EOS."""
    eos_ids = {tokenizer.eos_token_id}
    outputs = []
    for batch in batches:
        inputs = tokenizer.pad({"input_ids": batch}, return_tensors="pt").to(model.device)
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        outputs.extend(until_eos(row, eos_ids) for row in generated[:, inputs["input_ids"].shape[1] :].tolist())
    return outputs


def tokens_per_second(run) -> tuple[float, list[list[int]]]:
    start = time.perf_counter()
    outputs = run()
    return sum(len(tokens) for tokens in outputs) / (time.perf_counter() - start), outputs


def script_tokens_per_second(flags: list[str], output_dir: str) -> tuple[float, float]:
    """The script's own generation-loop throughput on a fresh output directory, and its end-to-end seconds."""
    start = time.perf_counter()
    summary = generate_continuations.main([*flags, "--output_dir", output_dir])
    return summary["tokens_per_second"], time.perf_counter() - start


def main():
    bench = parse_arguments()
    work = tempfile.mkdtemp(prefix="bench_continuations_")
    torch.manual_seed(0)
    llm = bench.llm_name_or_path or save_tiny_llm(os.path.join(work, "llm"), chat=False)
    dataset_name = bench.dataset_name or synthesize_corpus(os.path.join(work, "corpus"), bench.num_rows)
    flags = ["--dataset_name", dataset_name, "--llm_name_or_path", llm, "--max_samples", str(bench.num_rows)]
    flags += ["--max_new_tokens", str(bench.max_new_tokens), "--batch_size", str(bench.batch_size)]
    corpus_args, args = generate_continuations.parse_arguments([*flags, "--output_dir", work])

    device = PartialState().device
    tokenizer = load_tokenizer(llm)
    model = AutoModelForCausalLM.from_pretrained(llm, dtype=args.dtype).to(device).eval()
    transcripts = list(open_transcripts(corpus_args))
    prompts, _ = build_prompts(transcripts, tokenizer, args, corpus_args.dataset_name)
    prompt_ids = [row["input_ids"] for row in prompts]
    unsorted_batches = [prompt_ids[start : start + 8] for start in range(0, len(prompt_ids), 8)]
    grouped_batches = [
        [row["input_ids"] for row in batch] for batch in length_grouped_batches(prompts, bench.batch_size)
    ]
    generate_batches(model, tokenizer, unsorted_batches[:1], bench.max_new_tokens)  # warm-up

    rates = {"script": [], "per_row": [], "unsorted_8": [], "grouped": []}
    for repeat in range(bench.repeats):  # interleaved, best of each: a shared machine's load varies
        rate, script_seconds = script_tokens_per_second(flags, os.path.join(work, f"out_{repeat}"))
        rates["script"].append(rate)
        rate, per_row_outputs = tokens_per_second(
            lambda: generate_batches(model, tokenizer, [[ids] for ids in prompt_ids], bench.max_new_tokens)
        )
        rates["per_row"].append(rate)
        for name, batches in (("unsorted_8", unsorted_batches), ("grouped", grouped_batches)):
            rates[name].append(
                tokens_per_second(lambda b=batches: generate_batches(model, tokenizer, b, bench.max_new_tokens))[0]
            )
    best = {name: max(values) for name, values in rates.items()}

    saved = {
        record["row_id"]: record["continuation"]
        for record in generate_continuations.read_parts(os.path.join(work, "out_0"), "continuations")
    }
    identical = sum(
        saved[row["row_id"]] == tokenizer.decode(tokens, skip_special_tokens=True).strip()
        for row, tokens in zip(prompts, per_row_outputs)
    )
    print(f"\n{len(prompts)} rows, {bench.max_new_tokens} new tokens max, device {device}, LLM {llm}")
    print(f"best of {bench.repeats} interleaved repeats; torch threads {torch.get_num_threads()}")
    print(f"script end to end (corpus, model load, generation, merge, save): {script_seconds:.1f} s")
    print(f"continuations identical to the per-row loop: {identical}/{len(prompts)}\n")
    print("| run | generated tokens/s | vs per-row loop | vs unsorted batches of 8 |")
    print("|---|---|---|---|")
    for name, key in [
        ("plain per-row `generate` loop", "per_row"),
        ("unsorted batches of 8 (original recipe)", "unsorted_8"),
        (f"length-grouped batches of {bench.batch_size}, generation only", "grouped"),
        (f"generate_continuations.py (length-grouped batches of {bench.batch_size})", "script"),
    ]:
        print(
            f"| {name} | {best[key]:.0f} | {best[key] / best['per_row']:.1f}x | {best[key] / best['unsorted_8']:.1f}x |"
        )
    print(json.dumps({**best, "identical": identical}))


if __name__ == "__main__":
    main()
