#!/usr/bin/env python
"""BLSP step 1: an LLM continues the transcript of every clip of a speech corpus; step 2 learns to do it from speech.

    python generate_continuations.py --dataset_name ./corpus --llm_name_or_path ./llm --output_dir ./continuations
    accelerate launch --multi_gpu --num_processes 8 generate_continuations.py configs/continuations.yaml

Each process appends its finished rows to JSON-lines parts under `output_dir/parts/`; a run started again with the
same arguments skips the rows found there, so a killed job resumes where it stopped. At the end the parts are merged
into a `datasets` dataset in `output_dir` (`load_from_disk`; columns `row_id`, `audio`, `text`, `continuation`) and
the rows left out are listed in `output_dir/rejects.jsonl`.
"""

import glob
import importlib.util
import json
import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from accelerate import PartialState
from accelerate.logging import get_logger
from accelerate.utils import gather_object, parse_flag_from_env
from datasets import Dataset
from huggingface_hub import HfApi
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

from data_blsp import (
    AUDIO,
    ROW_ID,
    TEXT,
    CorpusArguments,
    JsonlLog,
    audio_rejection,
    open_corpus,
    parse_script_arguments,
    read_jsonl,
    reject_record,
    text_rejection,
)
from processing_blsp import CONTINUATION_INSTRUCTION, PROMPT_LAYOUTS, render_prompt

logger = get_logger(__name__)

CONTINUATION = "continuation"
HUB_METADATA_FILE = "blsp_continuations.json"


@dataclass
class ContinuationArguments:
    """The LLM, its prompt, generation settings and where the results go."""

    llm_name_or_path: str = field(metadata={"help": "The LLM that continues the transcripts (Hub id or local path)."})
    output_dir: str = field(metadata={"help": "Where the dataset, its rejects and the resumable parts are written."})
    instruction: str = field(default=CONTINUATION_INSTRUCTION, metadata={"help": "The instruction of the prompt."})
    prompt_layout: str = field(
        default="instruction_first",
        metadata={"choices": PROMPT_LAYOUTS, "help": "Order of instruction and transcript in the prompt."},
    )
    system_prompt: str | None = field(default=None, metadata={"help": "System message (chat-template LLMs)."})
    normalize_transcripts: bool = field(
        default=False, metadata={"help": "Normalise transcripts with Whisper's English text normaliser first."}
    )
    max_prompt_tokens: int = field(
        default=192, metadata={"help": "Leave out rows whose prompt has more tokens than this (listed as rejects)."}
    )
    max_new_tokens: int = field(default=64, metadata={"help": "Longest continuation, in tokens."})
    do_sample: bool = field(default=False, metadata={"help": "Sample instead of decoding greedily."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (with --do_sample)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (with --do_sample)."})
    seed: int = field(default=42, metadata={"help": "Random seed (with --do_sample)."})
    batch_size: int = field(
        default=32, metadata={"help": "Prompts per batch, grouped by length; with vLLM, prompts handed over at once."}
    )
    backend: Literal["transformers", "vllm"] = field(
        default="transformers", metadata={"help": "`transformers` (model.generate) or `vllm` (when installed)."}
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = field(
        default="auto", metadata={"help": "LLM weights' dtype; `auto` is bfloat16 on GPU, float32 on CPU."}
    )
    dataloader_num_workers: int = field(
        default=0, metadata={"help": "Worker processes decoding and checking audio ahead of generation."}
    )
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Start afresh instead of resuming."})
    push_to_hub: bool = field(default=False, metadata={"help": "Push the dataset to the Hub as `hub_dataset_id`."})
    hub_dataset_id: str | None = field(default=None, metadata={"help": "The Hub dataset repository to push to."})

    def __post_init__(self):
        if self.push_to_hub and not self.hub_dataset_id:
            raise ValueError("--push_to_hub needs --hub_dataset_id.")
        if self.backend == "vllm" and importlib.util.find_spec("vllm") is None:
            raise ValueError("--backend vllm needs vLLM (`pip install vllm`); --backend transformers always works.")


def parse_arguments(argv: list[str] | None = None) -> tuple[CorpusArguments, ContinuationArguments]:
    """Flags, or a single .json/.yaml file holding them."""
    return parse_script_arguments((CorpusArguments, ContinuationArguments), argv)


def load_tokenizer(name_or_path: str):
    """The LLM's tokenizer, padding on the left (for generation); EOS pads when it has no pad token."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def run_metadata(corpus_args: CorpusArguments, args: ContinuationArguments, tokenizer) -> dict:
    """What produced the continuations: stored with the dataset and checked when a run resumes."""
    return {
        "llm_name_or_path": args.llm_name_or_path,
        "instruction": args.instruction,
        "prompt_layout": args.prompt_layout,
        "system_prompt": args.system_prompt,
        "template": "chat_template" if tokenizer.chat_template else "blsp_base",
        "prompt_template": render_prompt(
            tokenizer, args.instruction, "{transcript}", args.prompt_layout, args.system_prompt
        ),
        "normalize_transcripts": args.normalize_transcripts,
        "max_prompt_tokens": args.max_prompt_tokens,
        "generation": {
            "max_new_tokens": args.max_new_tokens,
            "do_sample": args.do_sample,
            "temperature": args.temperature,
            "top_p": args.top_p,
            "seed": args.seed,
            "backend": args.backend,
            "dtype": args.dtype,
        },
        "corpus": asdict(corpus_args),
    }


def part_path(output_dir: str, kind: str, process_index: int) -> str:
    """The JSON-lines part of `kind` ("continuations" or "rejects") that one process appends to."""
    return os.path.join(output_dir, "parts", f"{kind}-{process_index:05d}.jsonl")


def read_parts(output_dir: str, kind: str) -> list[dict]:
    """Every complete record of every process's parts of `kind`, from this run and earlier ones."""
    paths = sorted(glob.glob(os.path.join(output_dir, "parts", f"{kind}-*.jsonl")))
    return [record for path in paths for record in read_jsonl(path)]


def prepare_output_dir(args: ContinuationArguments, metadata: dict, state: PartialState) -> None:
    """Start `output_dir` afresh, or check that the run found there had the same settings, so it can resume."""
    settings_path = os.path.join(args.output_dir, "parts", "settings.json")
    if state.is_main_process:
        if args.overwrite_output_dir and os.path.isdir(args.output_dir):
            shutil.rmtree(args.output_dir)
        if not os.path.exists(settings_path):
            os.makedirs(os.path.dirname(settings_path), exist_ok=True)
            write_atomically(settings_path, json.dumps(metadata, indent=2))
    state.wait_for_everyone()
    with open(settings_path, encoding="utf-8") as file:
        stored = json.load(file)
    if stored != json.loads(json.dumps(metadata)):
        raise ValueError(
            f"{args.output_dir} holds a run with other settings ({settings_path}); resume it with the same "
            "arguments, or pass --overwrite_output_dir or another --output_dir."
        )


def write_atomically(path: str, text: str) -> None:
    """Write `text` to `path` so that readers see the old file or the new one, never a part."""
    with open(path + ".tmp", "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(path + ".tmp", path)


def transcript_normalizer(normalize: bool):
    """Whisper's English text normaliser (without its British-to-American spelling table), or a plain strip."""
    return EnglishTextNormalizer({}) if normalize else str.strip


def build_prompts(corpus: Dataset, row_ids: list[int], tokenizer, args: ContinuationArguments, show_progress: bool):
    """Tokenized prompts (`row_id`, `text`, `input_ids`) of rows with a usable transcript, and rejects of the rest."""
    normalize = transcript_normalizer(args.normalize_transcripts)
    texts = corpus.select(row_ids)[TEXT]
    candidates, rejects = [], []
    rows = tqdm(zip(row_ids, texts), total=len(row_ids), desc="Checking transcripts", disable=not show_progress)
    for row_id, text in rows:
        reason = text_rejection(text)
        if not reason:
            text = normalize(text)
            reason = text_rejection(text)
        if reason:
            rejects.append(reject_record(row_id, corpus[row_id][AUDIO], reason))
        else:
            candidates.append({ROW_ID: row_id, TEXT: text})
    prompts = [
        render_prompt(tokenizer, args.instruction, row[TEXT], args.prompt_layout, args.system_prompt)
        for row in candidates
    ]
    kept = []
    for row, input_ids in zip(candidates, tokenizer(prompts, add_special_tokens=False)["input_ids"]):
        if len(input_ids) > args.max_prompt_tokens:
            reason = ("long_prompt", f"{len(input_ids)} prompt tokens, more than {args.max_prompt_tokens}")
            rejects.append(reject_record(row[ROW_ID], corpus[row[ROW_ID]][AUDIO], reason))
        else:
            kept.append({**row, "input_ids": input_ids})
    return kept, rejects


def length_grouped_batches(prompts: list[dict], batch_size: int) -> list[list[dict]]:
    """Batches of prompts of similar length, longest first (little padding; out-of-memory shows up at once)."""
    ordered = sorted(prompts, key=lambda row: (-len(row["input_ids"]), row[ROW_ID]))
    return [ordered[start : start + batch_size] for start in range(0, len(ordered), batch_size)]


class AudioCheckedBatches(torch.utils.data.Dataset):
    """Prompt batches whose audio is decoded and checked (in DataLoader workers if asked); bad rows become rejects."""

    def __init__(self, corpus: Dataset, batches: list[list[dict]], corpus_args: CorpusArguments):
        self.audio = corpus.select_columns([AUDIO])
        self.batches = batches
        self.min_seconds = corpus_args.min_audio_seconds
        self.silence_threshold = corpus_args.silence_threshold

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> tuple[list[dict], list[dict]]:
        rows = self.batches[index]
        audios = self.audio[[row[ROW_ID] for row in rows]][AUDIO]
        kept, rejects = [], []
        for row, audio in zip(rows, audios):
            reason = audio_rejection(audio, self.min_seconds, self.silence_threshold)
            if reason:
                rejects.append(reject_record(row[ROW_ID], audio, reason))
            else:
                kept.append(row)
        return kept, rejects


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def until_eos(tokens: list[int], eos_ids: set[int]) -> list[int]:
    """Generated tokens up to and including the first EOS (what follows it is padding)."""
    for index, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[: index + 1]
    return tokens


class TransformersGenerator:
    """`model.generate` on left-padded batches: the checkpoint's generation config, greedy unless `do_sample`."""

    def __init__(self, args: ContinuationArguments, tokenizer, device: torch.device):
        dtype = resolve_dtype(args.dtype, device)
        self.model = AutoModelForCausalLM.from_pretrained(args.llm_name_or_path, dtype=dtype).to(device).eval()
        self.tokenizer = tokenizer
        sampling = {"temperature": args.temperature, "top_p": args.top_p} if args.do_sample else {}
        self.generate_kwargs = {
            "max_new_tokens": args.max_new_tokens,
            "do_sample": args.do_sample,
            "num_beams": 1,
            "pad_token_id": tokenizer.pad_token_id,
            **sampling,
        }
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = {tokenizer.eos_token_id} if eos is None else set(eos if isinstance(eos, list) else [eos])

    def generate(self, prompts: list[list[int]]) -> list[list[int]]:
        batch = self.tokenizer.pad({"input_ids": prompts}, return_tensors="pt").to(self.model.device)
        output = self.model.generate(**batch, **self.generate_kwargs)
        new_tokens = output[:, batch["input_ids"].shape[1] :].tolist()
        return [until_eos(tokens, self.eos_ids) for tokens in new_tokens]


class VllmGenerator:
    """vLLM's continuous batching, in one process (imported only when chosen).

    Only `max_new_tokens`, `temperature` and `top_p` are set: other defaults of the checkpoint's generation config
    (e.g. a repetition penalty) are not applied, unlike with `model.generate`.
    """

    def __init__(self, args: ContinuationArguments, tokenizer, device: torch.device):
        from vllm import LLM, SamplingParams

        dtype = str(resolve_dtype(args.dtype, device)).removeprefix("torch.")
        self.llm = LLM(model=args.llm_name_or_path, dtype=dtype, seed=args.seed)
        self.sampling_params = SamplingParams(
            max_tokens=args.max_new_tokens,
            temperature=args.temperature if args.do_sample else 0.0,
            top_p=args.top_p if args.do_sample else 1.0,
        )
        self.eos_ids = {tokenizer.eos_token_id}

    def generate(self, prompts: list[list[int]]) -> list[list[int]]:
        requests = [{"prompt_token_ids": input_ids} for input_ids in prompts]
        outputs = self.llm.generate(requests, self.sampling_params, use_tqdm=False)
        return [until_eos(list(output.outputs[0].token_ids), self.eos_ids) for output in outputs]


def build_generator(args: ContinuationArguments, tokenizer, state: PartialState):
    if args.backend == "vllm":
        if state.num_processes > 1:
            raise ValueError("--backend vllm batches on its own: run it as one process, without accelerate launch.")
        return VllmGenerator(args, tokenizer, state.device)
    return TransformersGenerator(args, tokenizer, state.device)


def continuation_records(rows: list[dict], outputs: list[list[int]], tokenizer) -> list[dict]:
    """One part record per generated row: its id, the transcript as prompted and the decoded continuation."""
    return [
        {ROW_ID: row[ROW_ID], TEXT: row[TEXT], CONTINUATION: tokenizer.decode(tokens, skip_special_tokens=True).strip()}
        for row, tokens in zip(rows, outputs)
    ]


def generate_rows(
    corpus: Dataset,
    row_ids: list[int],
    corpus_args: CorpusArguments,
    args: ContinuationArguments,
    tokenizer,
    state: PartialState,
) -> dict:
    """Continue the transcripts of `row_ids`, appending results and rejects to this process's parts as it goes."""
    show_progress = state.is_local_main_process
    continuations = JsonlLog(part_path(args.output_dir, "continuations", state.process_index))
    rejects = JsonlLog(part_path(args.output_dir, "rejects", state.process_index))
    prompts, text_rejects = build_prompts(corpus, row_ids, tokenizer, args, show_progress)
    rejects.append(text_rejects)
    batches = AudioCheckedBatches(corpus, length_grouped_batches(prompts, args.batch_size), corpus_args)
    loader = DataLoader(batches, batch_size=None, num_workers=args.dataloader_num_workers)
    generator = build_generator(args, tokenizer, state) if prompts else None
    progress = tqdm(total=len(row_ids), unit="row", desc="Generating", disable=not show_progress)
    progress.update(len(text_rejects))
    generated_rows = generated_tokens = 0
    start = time.perf_counter()
    for rows, audio_rejects in loader:
        rejects.append(audio_rejects)
        outputs = generator.generate([row["input_ids"] for row in rows]) if rows else []
        continuations.append(continuation_records(rows, outputs, tokenizer))
        generated_rows += len(rows)
        generated_tokens += sum(len(tokens) for tokens in outputs)
        progress.update(len(rows) + len(audio_rejects))
        progress.set_postfix(tokens_per_s=f"{generated_tokens / (time.perf_counter() - start):.1f}")
    progress.close()
    continuations.close()
    rejects.close()
    return {"rows": generated_rows, "tokens": generated_tokens, "seconds": time.perf_counter() - start}


def first_by_row_id(records: list[dict]) -> list[dict]:
    """One record per row id (the first written), sorted by row id."""
    unique = {}
    for record in records:
        unique.setdefault(record[ROW_ID], record)
    return [unique[row_id] for row_id in sorted(unique)]


def merge_parts(corpus: Dataset, output_dir: str, metadata: dict) -> tuple[Dataset, list[dict]]:
    """The accepted rows (audio from the corpus, transcript and continuation from the parts) and the rejects."""
    accepted = first_by_row_id(read_parts(output_dir, "continuations"))
    dataset = corpus.select([record[ROW_ID] for record in accepted]).remove_columns(TEXT)
    dataset = dataset.add_column(TEXT, [record[TEXT] for record in accepted])
    dataset = dataset.add_column(CONTINUATION, [record[CONTINUATION] for record in accepted])
    dataset.info.description = json.dumps(metadata)
    return dataset, first_by_row_id(read_parts(output_dir, "rejects"))


def push_dataset(dataset: Dataset, metadata: dict, hub_dataset_id: str) -> None:
    """Push the dataset, and its metadata as `blsp_continuations.json` (the Hub keeps no dataset description)."""
    dataset.push_to_hub(hub_dataset_id)
    HfApi().upload_file(
        path_or_fileobj=json.dumps(metadata, indent=2).encode(),
        path_in_repo=HUB_METADATA_FILE,
        repo_id=hub_dataset_id,
        repo_type="dataset",
    )


def write_results(corpus: Dataset, args: ContinuationArguments, metadata: dict, stats: list[dict]) -> dict:
    """Merge the parts into the saved dataset and `rejects.jsonl` (pushing it if asked); returns the run's summary."""
    dataset, rejects = merge_parts(corpus, args.output_dir, metadata)
    dataset.save_to_disk(args.output_dir)
    rejects_text = "".join(json.dumps(reject) + "\n" for reject in rejects)
    write_atomically(os.path.join(args.output_dir, "rejects.jsonl"), rejects_text)
    if args.push_to_hub:
        push_dataset(dataset, metadata, args.hub_dataset_id)
    seconds = max(stat["seconds"] for stat in stats)
    tokens = sum(stat["tokens"] for stat in stats)
    return {
        "rows": len(corpus),
        "accepted": len(dataset),
        "rejected": len(rejects),
        "rejected_by_reason": dict(Counter(reject["reason"] for reject in rejects)),
        "generated_rows_this_run": sum(stat["rows"] for stat in stats),
        "generated_tokens_this_run": tokens,
        "generation_seconds": seconds,
        "tokens_per_second": tokens / seconds if seconds else 0.0,
    }


def main(argv: list[str] | None = None) -> dict:
    """Run step 1; returns its summary on the main process (accepted and rejected rows, generation throughput)."""
    corpus_args, args = parse_arguments(argv)
    set_seed(args.seed)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    # PartialState only goes multi-process on CPU when told so (e.g. `accelerate launch --multi_gpu` without GPUs)
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.accelerator.is_available())
    tokenizer = load_tokenizer(args.llm_name_or_path)
    metadata = run_metadata(corpus_args, args, tokenizer)
    prepare_output_dir(args, metadata, state)
    with state.main_process_first():
        corpus = open_corpus(corpus_args)
    done = {record[ROW_ID] for kind in ("continuations", "rejects") for record in read_parts(args.output_dir, kind)}
    state.wait_for_everyone()  # every process has read the parts before any appends to them
    with state.split_between_processes(list(range(len(corpus)))) as shard:
        todo = [row_id for row_id in shard if row_id not in done]
    logger.info(f"{len(corpus)} rows, {len(done)} done before; this process continues {len(todo)}.")
    stats = gather_object([generate_rows(corpus, todo, corpus_args, args, tokenizer, state)])
    summary = {}
    if state.is_main_process:
        summary = write_results(corpus, args, metadata, stats)
        logger.info(f"Summary: {json.dumps(summary)}")
    state.wait_for_everyone()
    return summary


if __name__ == "__main__":
    main()
