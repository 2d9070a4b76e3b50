#!/usr/bin/env python
"""How close step 2 runs to this machine's limit: model FLOP/s of each objective as a fraction of the measured
matrix-multiply peak, and where each step's time goes.

    python -m bench.flop_utilisation --model runs/english/ctc-long/checkpoint-1500 \
        --ctc_data english/data/train_extra --continuations runs/english/continuations-800

- **Peak**: the best of `--peak_repeats` fp32 `torch.mm` of two 4096 x 4096 matrices, at this process's threads.
- **Objectives** on the given BLSP checkpoint (the real pair: whisper-tiny.en + SmolLM2-135M-Instruct), each a
  `BlspTrainer.train` of `--steps` steps after one warm-up step, batches grouped by duration as `train_adapter.py`
  does: `ctc` (the warm-up, `--ctc_batch_size` clips of `--ctc_data`); `ctc_stored_states` (`ctc` from the second
  epoch of `--encoder_states_dir`: an untimed first pass stores the same batches' states); `kl_live` (KL
  to the LLM reading the transcript), `kl_cached` (step 1's top-64 teacher: random ids and log-probabilities, the
  cost not the values) and `ce`, each on `--batch_size` rows of `--continuations` with `speech_compression="ctc"`
  as the English recipe.
- **FLOPs** of one step are counted by `torch.utils.flop_counter.FlopCounterMode` from the shapes of every matrix
  multiply, convolution and attention, forward and backward (2 m n k per m x k by k x n product); elementwise ops
  (softmax, GELU, layer norms, the optimizer) are not counted. Utilisation = FLOPs per sample x samples/s / peak.
- **Profile**: wall time of each step split into data (the collator: decoding, resampling, features), encoder,
  adapter and LLM forward, the CTC readout (speech frames against the 49k-token embedding table), the rest of the
  loss, backward, and the optimizer step.
"""

import argparse
import json
import tempfile
import time
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import TrainerCallback

import modeling_blsp
import train_adapter
from blsp_steps import objectives as objectives_module
from blsp_steps import training_data
from blsp_steps.corpora import TEACHER_IDS, TEACHER_LOGPROBS
from blsp_steps.encoder_states import EncoderStateCache, encoder_fingerprint
from blsp_steps.training import BlspTrainer, SpeechPromptCollator, select_trainable_parameters
from modeling_blsp import BlspForConditionalGeneration
from processing_blsp import BlspProcessor

BUCKETS = ("data", "encoder", "adapter", "llm", "readout", "loss_rest", "backward", "optimizer")
TOP_K = 64
UNTIMED = {"encode_variable_length": modeling_blsp.encode_variable_length, "ctc_readout": modeling_blsp.ctc_readout}
"""What each objective's clock wraps (wrapping the previous objective's wrappers would nest them)."""
OBJECTIVE_RUNS = ("ctc", "ctc_stored_states", "kl_live", "kl_cached", "ce")


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="A full BLSP checkpoint (the CTC warm-up's).")
    parser.add_argument("--ctc_data", required=True, help="An audiofolder with transcripts (the CTC warm-up's).")
    parser.add_argument("--continuations", required=True, help="Step 1's output (for kl and ce).")
    parser.add_argument("--objectives", nargs="*", default=list(OBJECTIVE_RUNS), choices=OBJECTIVE_RUNS)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--ctc_batch_size", type=int, default=16)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--peak_repeats", type=int, default=5)
    parser.add_argument("--output", default=None, help="Also write the results as JSON here.")
    return parser.parse_args()


def matmul_peak(repeats: int, size: int = 4096) -> float:
    """FLOP/s of the best fp32 `torch.mm` of two size x size matrices."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = min(timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * size**3 / best


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


class Clock:
    """Seconds spent in each bucket, summed over the timed steps."""

    def __init__(self):
        self.seconds = dict.fromkeys(BUCKETS, 0.0)
        self.on = False

    @contextmanager
    def bucket(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.on:
                self.seconds[name] += time.perf_counter() - start

    def wrap(self, name: str, function):
        def wrapped(*args, **kwargs):
            with self.bucket(name):
                return function(*args, **kwargs)

        return wrapped

    def hook_module(self, name: str, module: torch.nn.Module):
        starts = []
        module.register_forward_pre_hook(lambda *_: starts.append(time.perf_counter()))

        def done(*_):
            if self.on:
                self.seconds[name] += time.perf_counter() - starts.pop()

        module.register_forward_hook(done)


class ProfiledTrainer(BlspTrainer):
    """`BlspTrainer` whose loss and step are timed into the clock (backward = step - loss)."""

    clock: Clock

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        start, before = time.perf_counter(), dict(self.clock.seconds)
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if self.clock.on:
            inner = sum(self.clock.seconds[name] - before[name] for name in ("encoder", "adapter", "llm", "readout"))
            self.clock.seconds["loss_rest"] += time.perf_counter() - start - inner
        self.loss_seconds = time.perf_counter() - start
        return result

    def training_step(self, model, inputs, num_items_in_batch=None):
        start = time.perf_counter()
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self.clock.on:
            self.clock.seconds["backward"] += time.perf_counter() - start - self.loss_seconds
        return loss


class OptimizerClock(TrainerCallback):
    def __init__(self, clock: Clock):
        self.clock, self.start = clock, None

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.clock.on:
            self.clock.seconds["optimizer"] += time.perf_counter() - self.start


def with_random_teacher(dataset, processor, vocab_size: int):
    """Step 1's cached top-k columns, random (the cost is measured, not the values)."""
    rng = np.random.default_rng(0)

    def add(row):
        positions = len(processor.tokenizer(row["continuation"], add_special_tokens=False)["input_ids"]) + 1
        ids = rng.integers(0, vocab_size, (positions, TOP_K))
        logprobs = -np.sort(rng.exponential(2.0, (positions, TOP_K)), axis=-1)[:, ::-1] - 0.01
        return {TEACHER_IDS: ids.tolist(), TEACHER_LOGPROBS: logprobs.astype(np.float32).tolist()}

    return dataset.map(add)


def run_objective(name: str, bench: argparse.Namespace, peak: float) -> dict:
    ctc = name.startswith("ctc")
    loss = "ctc" if ctc else "kl" if name.startswith("kl") else "ce"
    batch_size = bench.ctc_batch_size if ctc else bench.batch_size
    source = bench.ctc_data if ctc else bench.continuations
    data_args = train_adapter.DataArguments(dataset_name=[source])
    dataset, _ = training_data.prepare_dataset([source], "train", data_args, {loss}, "length")
    dataset = dataset.select(range(min(len(dataset), batch_size * (bench.steps + 1) * 4)))
    processor = BlspProcessor.from_pretrained(bench.model)
    model = BlspForConditionalGeneration.from_pretrained(
        bench.model, dtype=torch.float32, speech_compression=None if ctc else "ctc"
    )
    vocab_size = model.get_input_embeddings().weight.shape[0]
    if name == "kl_cached":
        dataset = with_random_teacher(dataset, processor, vocab_size)
    select_trainable_parameters(model, train_speech_encoder=False)
    cache = None
    if name == "ctc_stored_states":
        fingerprint = encoder_fingerprint(model, processor.feature_extractor, processor.audio_padding_seconds)
        cache = EncoderStateCache(tempfile.mkdtemp(prefix="bench_states_"), fingerprint)
    clock = Clock()
    modeling_blsp.encode_variable_length = clock.wrap("encoder", UNTIMED["encode_variable_length"])
    objectives_module.ctc_readout = modeling_blsp.ctc_readout = clock.wrap("readout", UNTIMED["ctc_readout"])
    clock.hook_module("adapter", model.adapter)
    clock.hook_module("llm", model.language_model)

    def trainer(steps: int, output_dir: str) -> ProfiledTrainer:
        args = train_adapter.BlspTrainingArguments(
            output_dir=output_dir,
            max_steps=steps,
            per_device_train_batch_size=batch_size,
            learning_rate=1e-5,
            save_strategy="no",
            logging_strategy="no",
            report_to="none",
            disable_tqdm=True,
            use_cpu=True,
            loss=loss,
            teacher="cached" if name == "kl_cached" else "live" if loss == "kl" else "auto",
            seed=0,
        )
        collator = SpeechPromptCollator(
            processor,
            with_teacher=objectives_module.needs_teacher(args.loss_terms),
            cached_teacher=name == "kl_cached",
            with_ctc_labels=ctc,
            vocab_size=vocab_size,
            encoder_cache_keys=cache is not None,
        )
        trainer = ProfiledTrainer(
            model=model,
            args=args,
            data_collator=clock.wrap("data", collator),
            train_dataset=dataset,
            encoder_cache=cache,
        )
        trainer.clock = clock
        trainer.add_callback(OptimizerClock(clock))
        return trainer

    warm_up = trainer(1, f"/tmp/bench_flops_{name}_warmup")
    warm_up.create_optimizer_and_scheduler(num_training_steps=1)
    warm_up.current_gradient_accumulation_steps = 1
    inputs = warm_up.data_collator([dataset[index] for index in range(batch_size)])
    if cache is not None:  # the first epoch: the same batches as the timed run (and these), their states stored
        warm_up.training_step(model, dict(inputs), None)
        trainer(bench.steps, f"/tmp/bench_flops_{name}_first_epoch").train()
    counter = FlopCounterMode(display=False)
    with counter:
        warm_up.training_step(model, dict(inputs), None)
    flops_per_sample = counter.get_total_flops() / batch_size
    clock.on = True
    metrics = trainer(bench.steps, f"/tmp/bench_flops_{name}").train().metrics
    samples_per_second = bench.steps * batch_size / metrics["train_runtime"]
    step_seconds = metrics["train_runtime"] / bench.steps
    profile = {bucket: seconds / bench.steps for bucket, seconds in clock.seconds.items()}
    profile["other"] = step_seconds - sum(profile.values())
    return {
        "batch_size": batch_size,
        "samples_per_second": samples_per_second,
        "step_seconds": step_seconds,
        "gflops_per_sample": flops_per_sample / 1e9,
        "achieved_gflops": flops_per_sample * samples_per_second / 1e9,
        "of_peak": flops_per_sample * samples_per_second / peak,
        "profile_seconds": profile,
    }


def main():
    bench = parse_arguments()
    peak = matmul_peak(bench.peak_repeats)
    print(f"\nfp32 matrix-multiply peak, {torch.get_num_threads()} threads: {peak / 1e9:.1f} GFLOP/s")
    results = {"threads": torch.get_num_threads(), "peak_gflops": peak / 1e9}
    for name in bench.objectives:
        results[name] = run_objective(name, bench, peak)
        print(name, json.dumps(results[name]), flush=True)
    print("\n| objective | batch | samples/s | GFLOP/sample | GFLOP/s | of peak |", " | ".join(BUCKETS), "| other |")
    print("|---|---:|---:|---:|---:|---:|" + "---:|" * (len(BUCKETS) + 1))
    for name in bench.objectives:
        result = results[name]
        step = result["step_seconds"]
        shares = " | ".join(f"{100 * seconds / step:.0f}%" for seconds in result["profile_seconds"].values())
        print(
            f"| {name} | {result['batch_size']} | {result['samples_per_second']:.2f} | "
            f"{result['gflops_per_sample']:.1f} | {result['achieved_gflops']:.1f} | {100 * result['of_peak']:.0f}% | "
            f"{shares} |"
        )
    if bench.output:
        with open(bench.output, "w") as file:
            json.dump(results, file, indent=2)


if __name__ == "__main__":
    main()
