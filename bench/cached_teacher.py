#!/usr/bin/env python
"""Step 1's cached teacher on real weights: what it costs step 1, and how close it is to the live teacher.

    python -m bench.cached_teacher --whisper converted/whisper-tiny.en --llm converted/smollm2-135m-instruct \
        --corpus english/data/train --rows 8 --top_k 64

Step 1 runs on `--rows` transcripts with and without `--teacher_top_k` (interleaved `--repeats`; tokens/s of each,
best of the repeats, and the output size), then step 2's KL objective on that batch (the student: an untrained
adapter, or the checkpoint `--blsp`) with the live teacher and the cached one: their loss values, the adapter
gradients' cosine, and the top-k agreement.
`--sweep_top_k 64 1024 16384` adds, for each k and temperature 1 and 2, the cached KL the live teacher's top k
(float16, as step 1 stores them) would give on that batch, against the live KL: the k a teacher needs for a bound.
"""

import argparse
import glob
import os
import tempfile

import torch

import generate_continuations
import train_adapter
from blsp_steps.corpora import CorpusArguments, continuations_metadata, join_audio, load_source
from blsp_steps.objectives import TrainingStep, kl_divergence_sum, kl_term, top_k_kl_divergence_sum
from blsp_steps.training import BlspTrainer, SpeechPromptCollator
from modeling_blsp import BlspForConditionalGeneration
from processing_blsp import BlspProcessor


def step_one(args, output_dir: str, top_k: int) -> dict:
    flags = ["--dataset_name", args.corpus, "--max_samples", str(args.rows), "--llm_name_or_path", args.llm]
    flags += ["--output_dir", output_dir, "--max_new_tokens", str(args.max_new_tokens), "--overwrite_output_dir"]
    flags += ["--batch_size", str(args.rows), "--teacher_top_k", str(top_k), "--prompt_layout", "speech_first"]
    return generate_continuations.main(flags)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--whisper", required=True)
    parser.add_argument("--llm", required=True)
    parser.add_argument("--corpus", required=True)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--top_k", type=int, default=64)
    parser.add_argument("--max_new_tokens", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--blsp", default=None, help="A trained BLSP checkpoint as the student (default: untrained).")
    parser.add_argument("--sweep_top_k", type=int, nargs="*", default=[], help="Top-k sizes to compare at T = 1, 2.")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="cached-teacher-")
    speeds = {0: [], args.top_k: []}
    for _ in range(args.repeats):
        for top_k in speeds:
            speeds[top_k].append(step_one(args, os.path.join(work, f"k{top_k}"), top_k)["tokens_per_second"])
    sizes = {k: sum(map(os.path.getsize, glob.glob(os.path.join(work, f"k{k}", "data", "*.parquet")))) for k in speeds}
    plain, cached = max(speeds[0]), max(speeds[args.top_k])
    print(f"step 1 tokens/s: plain {plain:.1f}, top-{args.top_k} {cached:.1f} ({cached / plain:.3f}x)", speeds)
    print(f"output: {sizes[0]} bytes plain, {sizes[args.top_k]} with the cache ({args.rows} rows)")

    dataset_dir = os.path.join(work, f"k{args.top_k}")
    dataset = load_source(CorpusArguments(dataset_name=dataset_dir))
    metadata = continuations_metadata(None, dataset_dir)
    dataset = join_audio(dataset, metadata["source"])
    rows = [{**row, "instruction": metadata["instruction"]} for row in dataset]
    torch.manual_seed(0)
    if args.blsp:
        bases = {"speech_model_name_or_path": args.whisper, "text_model_name_or_path": args.llm}
        model = BlspForConditionalGeneration.from_pretrained(args.blsp, **bases).float().eval()
        processor = BlspProcessor.from_pretrained(args.blsp)
    else:
        model = BlspForConditionalGeneration.from_speech_text_pretrained(args.whisper, args.llm).eval()
        processor = BlspProcessor.from_speech_text_pretrained(args.whisper, args.llm, config=model.config)
    processor.prompt_layout = metadata["prompt_layout"]
    training_args = train_adapter.BlspTrainingArguments(output_dir=work, use_cpu=True, report_to="none", loss="kl")
    trainer = BlspTrainer(model=model, args=training_args)
    results = {}
    for cached in (False, True):
        batch = SpeechPromptCollator(processor, with_teacher=True, cached_teacher=cached)(rows)
        batch.pop("num_skipped_rows")
        step = TrainingStep(trainer, model, batch, None)
        model.zero_grad()
        loss = kl_term(step)
        loss.backward()
        gradient = torch.cat([parameter.grad.flatten() for parameter in model.adapter.parameters()])
        results[cached] = (float(loss), gradient, step.teacher)
        if not cached:
            student_logits = step.student[1].detach()
    (live, live_gradient, live_logits), (cache, cache_gradient, (ids, logprobs)) = results[False], results[True]
    live_logprobs = torch.log_softmax(live_logits.float() / training_args.kl_temperature, -1)
    same_ids = (live_logprobs.topk(args.top_k, -1).indices == ids).all(-1).float().mean()
    difference = (live_logprobs.gather(-1, ids) - logprobs.float()).abs().max()
    tail = 1 - logprobs.float().exp().sum(-1)
    print(
        f"KL live {live:.4f}, cached {cache:.4f} ({cache / live - 1:+.2%}); gradient cosine "
        f"{torch.nn.functional.cosine_similarity(live_gradient, cache_gradient, dim=0):.4f}"
    )
    print(
        f"positions {ids.shape[0]}: top-{args.top_k} ids equal at {same_ids:.1%}, max |log-prob difference| "
        f"{difference:.2e}; teacher tail mass at T={training_args.kl_temperature}: mean {tail.mean():.3f}"
    )
    for temperature in (1.0, 2.0) if args.sweep_top_k else ():
        exact = float(kl_divergence_sum(student_logits, live_logits, temperature))
        teacher = torch.log_softmax(live_logits.float() / temperature, -1)
        for top_k in args.sweep_top_k:
            values, ids = teacher.topk(top_k, -1)
            bound = float(top_k_kl_divergence_sum(student_logits, ids, values.half(), temperature))
            tail = 1 - values.exp().sum(-1).mean()
            print(
                f"T={temperature:g} top-{top_k}: KL {bound:.4f} vs live {exact:.4f} ({bound / exact - 1:+.2%}), "
                f"tail {tail:.3f}"
            )


if __name__ == "__main__":
    main()
