#!/usr/bin/env python
"""BLSP step 1: an LLM continues the transcript of every clip of a speech corpus; step 2 learns to do it from speech.

    python generate_continuations.py --dataset_name ./corpus --llm_name_or_path ./llm --output_dir ./continuations
    accelerate launch --multi_gpu --num_processes 8 generate_continuations.py configs/continuations.yaml

Step 1 reads the transcripts only: no audio is decoded, and for parquet corpora (local or on the Hub) none is read.
Each process appends its finished rows to JSON-lines parts under `output_dir/parts/`; a run started again with the
same arguments skips the rows found there, so a killed job resumes where it stopped (and a finished one only writes
its output again). At the end the parts are merged into parquet shards `output_dir/data/train-*.parquet`
(`load_dataset(output_dir)`; columns `row_id`, `text`, `continuation`, plus `audio` with `--embed_audio` and the
cached teacher `teacher_top_k_ids`, `teacher_top_k_logprobs` with `--teacher_top_k`), the
settings and the source corpus (what finds each clip again by `row_id`) in `output_dir/blsp_continuations.json`,
and the rows left out in `output_dir/rejects.jsonl`.
"""

import glob
import importlib.util
import itertools
import json
import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import pyarrow as pa
import torch
from accelerate import PartialState
from accelerate.logging import get_logger
from accelerate.utils import gather_object, parse_flag_from_env
from datasets import Dataset, IterableDataset, concatenate_datasets
from datasets.distributed import split_dataset_by_node
from datasets.table import InMemoryTable, embed_table_storage
from huggingface_hub import HfApi
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import AutoTokenizer, set_seed

from blsp_steps.arguments import dtype_field, parse_script_arguments
from blsp_steps.continuations import add_cached_teacher, build_generator, check_context, teacher_column
from blsp_steps.corpora import (
    AUDIO,
    CONTINUATION,
    CONTINUATIONS_METADATA_FILE,
    ROW_ID,
    TEACHER_IDS,
    TEACHER_LOGPROBS,
    TEXT,
    CorpusArguments,
    open_corpus,
    open_transcripts,
    source_reference,
    transcript_normalizer,
)
from blsp_steps.identity import model_fingerprint, setting_changes
from blsp_steps.rejects import JsonlLog, audio_rejection, audio_source, read_jsonl, reject_record, text_rejection
from processing_blsp import CONTINUATION_INSTRUCTION, PROMPT_LAYOUTS, render_prompt

logger = get_logger(__name__)

DATA_DIR = "data"


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
    dtype: str = dtype_field()
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Run code the LLM checkpoint ships (its own model or tokenizer classes)."}
    )
    length_grouping_rows: int = field(
        default=4096, metadata={"help": "Rows read ahead and sorted by prompt length into batches."}
    )
    streaming: bool = field(
        default=False,
        metadata={
            "help": "Stream the corpus (`datasets` IterableDataset) instead of opening it whole; Hub corpora's "
            "transcripts are always streamed."
        },
    )
    check_audio: bool = field(
        default=False,
        metadata={
            "help": "Also decode and check every clip (reads the whole audio); by default step 2 skips and "
            "counts unreadable clips."
        },
    )
    dataloader_num_workers: int = field(
        default=0,
        metadata={"help": "Processes decoding and checking audio ahead of generation (--check_audio)."},
    )
    embed_audio: bool = field(
        default=False,
        metadata={"help": "Write the audio bytes into the output too: a self-contained training set (e.g. to push)."},
    )
    teacher_top_k: int = field(
        default=0,
        metadata={
            "help": "Also keep the LLM's K most likely next tokens and their log-probabilities at every continuation "
            "position and the end (int32 ids, float16 values, about 6*K bytes a token): step 2's KL objective then "
            "reads this cached teacher instead of running the LLM on the transcript. 0 keeps none."
        },
    )
    teacher_temperature: float = field(
        default=2.0,
        metadata={
            "help": "Temperature of the cached teacher's log-probabilities (with --teacher_top_k): step 2 reads the "
            "cache with the same --kl_temperature (default 2.0 in both)."
        },
    )
    rows_per_shard: int = field(default=100_000, metadata={"help": "Rows per parquet shard of the output."})
    overwrite_output_dir: bool = field(default=False, metadata={"help": "Start afresh instead of resuming."})
    push_to_hub: bool = field(default=False, metadata={"help": "Push the dataset to the Hub as `hub_dataset_id`."})
    hub_dataset_id: str | None = field(default=None, metadata={"help": "The Hub dataset repository to push to."})

    def __post_init__(self):
        if self.push_to_hub and not self.hub_dataset_id:
            raise ValueError("--push_to_hub needs --hub_dataset_id.")
        if self.teacher_top_k < 0:
            raise ValueError(f"--teacher_top_k must be 0 (off) or a number of tokens, got {self.teacher_top_k}.")
        for name in ("temperature", "teacher_temperature"):
            if not 0 < getattr(self, name) < float("inf"):  # NaN fails every comparison
                raise ValueError(
                    f"--{name} must be a finite number above 0, got {getattr(self, name)}: at 0 or below the "
                    "log-probabilities are NaN or inverted (greedy decoding is --do_sample false)."
                )
        if self.teacher_top_k and self.backend == "vllm" and self.teacher_temperature != 1.0:
            raise ValueError("--backend vllm gives log-probabilities at temperature 1: pass --teacher_temperature 1.")
        if self.backend == "vllm" and importlib.util.find_spec("vllm") is None:
            raise ValueError("--backend vllm needs vLLM (`pip install vllm`); --backend transformers always works.")


def parse_arguments(argv: list[str] | None = None) -> tuple[CorpusArguments, ContinuationArguments]:
    """Flags, or a single .json/.yaml file holding them."""
    return parse_script_arguments((CorpusArguments, ContinuationArguments), argv)


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """The LLM's tokenizer, padding on the left (for generation); EOS pads when it has no pad token."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, padding_side="left", trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def run_metadata(corpus_args: CorpusArguments, args: ContinuationArguments, tokenizer) -> dict:
    """What produced the continuations: stored with the dataset and checked when a run resumes."""
    return {
        "llm_name_or_path": args.llm_name_or_path,
        "llm_fingerprint": model_fingerprint(args.llm_name_or_path),
        "instruction": args.instruction,
        "prompt_layout": args.prompt_layout,
        "system_prompt": args.system_prompt,
        "template": "chat_template" if tokenizer.chat_template else "blsp_base",
        "prompt_template": render_prompt(
            tokenizer, args.instruction, "{transcript}", args.prompt_layout, args.system_prompt
        ),
        "normalize_transcripts": args.normalize_transcripts,
        "max_prompt_tokens": args.max_prompt_tokens,
        "check_audio": args.check_audio,
        "generation": {
            "max_new_tokens": args.max_new_tokens,
            "do_sample": args.do_sample,
            "temperature": args.temperature,
            "top_p": args.top_p,
            "seed": args.seed,
            "backend": args.backend,
            "dtype": args.dtype,
        },
        "teacher_top_k": args.teacher_top_k,
        "teacher_temperature": args.teacher_temperature if args.teacher_top_k else None,
        "corpus": asdict(corpus_args),
        "source": source_reference(corpus_args),
    }


def part_path(output_dir: str, kind: str, process_index: int) -> str:
    """The JSON-lines part of `kind` ("continuations" or "rejects") that one process appends to."""
    return os.path.join(output_dir, "parts", f"{kind}-{process_index:05d}.jsonl")


def read_parts(output_dir: str, kind: str) -> list[dict]:
    """Every complete record of every process's parts of `kind`, from this run and earlier ones."""
    paths = sorted(glob.glob(os.path.join(output_dir, "parts", f"{kind}-*.jsonl")))
    return [record for path in paths for record in read_jsonl(path)]


def start_or_check_output_dir(args: ContinuationArguments, metadata: dict, state: PartialState) -> None:
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
    changes = setting_changes(stored, json.loads(json.dumps(metadata)))
    if changes:
        raise ValueError(
            f"{args.output_dir} holds a run with other settings ({settings_path}): {'; '.join(changes)}. Resume it "
            "with the same arguments and models, or pass --overwrite_output_dir or another --output_dir."
        )


def write_atomically(path: str, text: str) -> None:
    """Write `text` to `path` so that readers see the old file or the new one, never a part."""
    with open(path + ".tmp", "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(path + ".tmp", path)


def build_prompts(rows: list[dict], tokenizer, args: ContinuationArguments, source: str):
    """Tokenized prompts (`row_id`, `text`, `input_ids`) of rows with a usable transcript, and rejects of the rest."""
    normalize = transcript_normalizer(args.normalize_transcripts)
    candidates, rejects = [], []
    for row in rows:
        text = row[TEXT]
        reason = text_rejection(text)
        if not reason:
            text = normalize(text)
            reason = text_rejection(text)
        if reason:
            rejects.append(reject_record(row[ROW_ID], source, reason))
        else:
            candidates.append({ROW_ID: row[ROW_ID], TEXT: text})
    if not candidates:
        return [], rejects
    prompts = [
        render_prompt(tokenizer, args.instruction, row[TEXT], args.prompt_layout, args.system_prompt)
        for row in candidates
    ]
    kept = []
    for row, input_ids in zip(candidates, tokenizer(prompts, add_special_tokens=False)["input_ids"]):
        if len(input_ids) > args.max_prompt_tokens:
            reason = ("long_prompt", f"{len(input_ids)} prompt tokens, more than {args.max_prompt_tokens}")
            rejects.append(reject_record(row[ROW_ID], source, reason))
        else:
            kept.append({**row, "input_ids": input_ids})
    return kept, rejects


def length_grouped_batches(prompts: list[dict], batch_size: int) -> list[list[dict]]:
    """Batches of prompts of similar length, longest first (little padding; out-of-memory shows up at once)."""
    ordered = sorted(prompts, key=lambda row: (-len(row["input_ids"]), row[ROW_ID]))
    return [ordered[start : start + batch_size] for start in range(0, len(ordered), batch_size)]


class AudioCheckedBatches(torch.utils.data.Dataset):
    """Prompt batches whose audio is decoded and checked (in DataLoader workers if asked); bad rows become rejects.

    Without `audio` (no --check_audio) the batches pass unchecked.
    """

    def __init__(self, audio: Dataset | None, batches: list[list[dict]], corpus_args: CorpusArguments):
        self.audio = audio
        self.batches = batches
        self.min_seconds = corpus_args.min_audio_seconds
        self.silence_threshold = corpus_args.silence_threshold

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, index: int) -> tuple[list[dict], list[dict]]:
        rows = self.batches[index]
        if self.audio is None:
            return rows, []
        audios = self.audio[[row[ROW_ID] for row in rows]][AUDIO]
        kept, rejects = [], []
        for row, audio in zip(rows, audios):
            reason = audio_rejection(audio, self.min_seconds, self.silence_threshold)
            if reason:
                rejects.append(reject_record(row[ROW_ID], audio_source(audio), reason))
            else:
                kept.append(row)
        return kept, rejects


def continuation_records(rows: list[dict], outputs: list[list[int]], tokenizer) -> list[dict]:
    """One part record per generated row: its id, the transcript as prompted and the decoded continuation."""
    return [
        {ROW_ID: row[ROW_ID], TEXT: row[TEXT], CONTINUATION: tokenizer.decode(tokens, skip_special_tokens=True).strip()}
        for row, tokens in zip(rows, outputs)
    ]


def chunks(rows, size: int):
    """Lists of up to `size` consecutive items of an iterable."""
    iterator = iter(rows)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def generate_rows(
    rows,
    done: set[int],
    audio: Dataset | None,
    corpus_args: CorpusArguments,
    args: ContinuationArguments,
    tokenizer,
    state: PartialState,
) -> dict:
    """Continue the transcripts of `rows` not in `done`, appending results and rejects to this process's parts as it
    goes; rows are read `length_grouping_rows` at a time and batched by prompt length within each group."""
    show_progress = state.is_local_main_process
    continuations = JsonlLog(part_path(args.output_dir, "continuations", state.process_index))
    rejects = JsonlLog(part_path(args.output_dir, "rejects", state.process_index))
    generator = None
    total = None if isinstance(rows, IterableDataset) else sum(row_id not in done for row_id in rows[ROW_ID])
    progress = tqdm(total=total, unit="row", desc="Generating", disable=not show_progress)  # a total gives time left
    generated_rows = generated_tokens = rescored_rows = 0
    start = time.perf_counter()
    todo = (row for row in rows if row[ROW_ID] not in done)
    for group in chunks(todo, args.length_grouping_rows):
        prompts, text_rejects = build_prompts(group, tokenizer, args, corpus_args.dataset_name)
        rejects.append(text_rejects)
        progress.update(len(text_rejects))
        batches = AudioCheckedBatches(audio, length_grouped_batches(prompts, args.batch_size), corpus_args)
        for batch, audio_rejects in DataLoader(batches, batch_size=None, num_workers=args.dataloader_num_workers):
            rejects.append(audio_rejects)
            if batch and generator is None:
                generator = build_generator(args, tokenizer, state)
            outputs, teachers = generator.generate([row["input_ids"] for row in batch]) if batch else ([], None)
            records = continuation_records(batch, outputs, tokenizer)
            if teachers is not None:
                rescored_rows += add_cached_teacher(records, batch, outputs, teachers, generator)
            continuations.append(records)
            generated_rows += len(batch)
            generated_tokens += sum(len(tokens) for tokens in outputs)
            progress.update(len(batch) + len(audio_rejects))
            progress.set_postfix(tokens_per_s=f"{generated_tokens / (time.perf_counter() - start):.1f}")
    progress.close()
    continuations.close()
    rejects.close()
    seconds = time.perf_counter() - start
    return {"rows": generated_rows, "tokens": generated_tokens, "rescored_rows": rescored_rows, "seconds": seconds}


def first_by_row_id(records: list[dict]) -> list[dict]:
    """One record per row id (the first written), sorted by row id."""
    unique = {}
    for record in records:
        unique.setdefault(record[ROW_ID], record)
    return [unique[row_id] for row_id in sorted(unique)]


def merged_continuations(output_dir: str, teacher_top_k: int = 0) -> Dataset:
    """The accepted rows of every part, one per row id, sorted: `row_id`, `text` (as prompted), `continuation`, and
    with `teacher_top_k` the cached teacher (`teacher_top_k_ids` int32, `teacher_top_k_logprobs` float16, each
    (positions, k) per row)."""
    accepted = first_by_row_id(read_parts(output_dir, "continuations"))
    columns = {
        ROW_ID: pa.array([record[ROW_ID] for record in accepted], pa.int64()),
        TEXT: pa.array([record[TEXT] for record in accepted], pa.string()),
        CONTINUATION: pa.array([record[CONTINUATION] for record in accepted], pa.string()),
    }
    if teacher_top_k:
        columns[TEACHER_IDS] = teacher_column(accepted, TEACHER_IDS, np.int32, teacher_top_k)
        columns[TEACHER_LOGPROBS] = teacher_column(accepted, TEACHER_LOGPROBS, np.float16, teacher_top_k)
    return Dataset(InMemoryTable(pa.table(columns)))


def with_embedded_audio(dataset: Dataset, corpus: Dataset) -> Dataset:
    """`dataset` with an `audio` column after `row_id`: the bytes of each row's clip, read from the source corpus."""
    audio = corpus.select(dataset[ROW_ID]).select_columns([AUDIO]).flatten_indices()
    embedded = audio.with_format("arrow").map(embed_table_storage, batched=True, keep_in_memory=True)
    embedded = embedded.with_format(None).cast_column(AUDIO, audio.features[AUDIO])
    return concatenate_datasets([dataset.select_columns([ROW_ID]), embedded, dataset.remove_columns(ROW_ID)], axis=1)


def write_shards(dataset: Dataset, output_dir: str, rows_per_shard: int, corpus: Dataset | None) -> int:
    """Write `output_dir/data/train-NNNNN-of-MMMMM.parquet` (replacing earlier shards at once); with `corpus`, each
    shard embeds its rows' audio. Returns the number of shards."""
    num_shards = max(1, -(-len(dataset) // rows_per_shard))
    staging = os.path.join(output_dir, DATA_DIR + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    for index in range(num_shards):
        shard = dataset.select(range(index * rows_per_shard, min(len(dataset), (index + 1) * rows_per_shard)))
        if corpus is not None:
            shard = with_embedded_audio(shard, corpus)
        shard.to_parquet(os.path.join(staging, f"train-{index:05d}-of-{num_shards:05d}.parquet"))
    shutil.rmtree(os.path.join(output_dir, DATA_DIR), ignore_errors=True)
    os.replace(staging, os.path.join(output_dir, DATA_DIR))
    return num_shards


def push_dataset(output_dir: str, hub_dataset_id: str) -> None:
    """Upload the shards, `blsp_continuations.json` and `rejects.jsonl` (earlier shards on the Hub are replaced)."""
    api = HfApi()
    api.create_repo(hub_dataset_id, repo_type="dataset", exist_ok=True)
    api.upload_folder(
        repo_id=hub_dataset_id,
        repo_type="dataset",
        folder_path=output_dir,
        allow_patterns=[f"{DATA_DIR}/*.parquet", CONTINUATIONS_METADATA_FILE, "rejects.jsonl"],
        delete_patterns=[f"{DATA_DIR}/*.parquet"],
        commit_message="Continuations from generate_continuations.py",
    )


def write_results(corpus_args: CorpusArguments, args: ContinuationArguments, metadata: dict, stats: list[dict]) -> dict:
    """Merge the parts into the parquet shards, settings and `rejects.jsonl` (pushing them if asked); returns the run's
    summary."""
    dataset = merged_continuations(args.output_dir, args.teacher_top_k)
    rejects = first_by_row_id(read_parts(args.output_dir, "rejects"))
    corpus = open_corpus(corpus_args) if args.embed_audio else None
    write_shards(dataset, args.output_dir, args.rows_per_shard, corpus)
    write_atomically(os.path.join(args.output_dir, CONTINUATIONS_METADATA_FILE), json.dumps(metadata, indent=2))
    rejects_text = "".join(json.dumps(reject) + "\n" for reject in rejects)
    write_atomically(os.path.join(args.output_dir, "rejects.jsonl"), rejects_text)
    if args.push_to_hub:
        push_dataset(args.output_dir, args.hub_dataset_id)
    seconds = max(stat["seconds"] for stat in stats)
    tokens = sum(stat["tokens"] for stat in stats)
    return {
        "rows": len(dataset) + len(rejects),
        "accepted": len(dataset),
        "rejected": len(rejects),
        "rejected_by_reason": dict(Counter(reject["reason"] for reject in rejects)),
        "generated_rows_this_run": sum(stat["rows"] for stat in stats),
        "generated_tokens_this_run": tokens,
        "rescored_rows_this_run": sum(stat["rescored_rows"] for stat in stats),
        "generation_seconds": seconds,
        "tokens_per_second": tokens / seconds if seconds else 0.0,
    }


def process_rows(transcripts: Dataset | IterableDataset, state: PartialState):
    """This process's share of the rows: a contiguous slice of a map-style corpus, every n-th row of a stream."""
    return split_dataset_by_node(transcripts, rank=state.process_index, world_size=state.num_processes)


def main(argv: list[str] | None = None) -> dict:
    """Run step 1; returns its summary on the main process (accepted and rejected rows, generation throughput)."""
    corpus_args, args = parse_arguments(argv)
    set_seed(args.seed)
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", level=logging.INFO)
    # PartialState only goes multi-process on CPU when told so (e.g. `accelerate launch --multi_gpu` without GPUs)
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.accelerator.is_available())
    check_context(args)
    tokenizer = load_tokenizer(args.llm_name_or_path, args.trust_remote_code)
    metadata = run_metadata(corpus_args, args, tokenizer)
    corpus_args.dataset_revision = metadata["source"]["dataset_revision"]  # read the Hub revision recorded
    start_or_check_output_dir(args, metadata, state)
    with state.main_process_first():
        transcripts = open_transcripts(corpus_args, streaming=args.streaming)
        audio = open_corpus(corpus_args).select_columns([AUDIO]) if args.check_audio else None
    done = {record[ROW_ID] for kind in ("continuations", "rejects") for record in read_parts(args.output_dir, kind)}
    state.wait_for_everyone()  # every process has read the parts before any appends to them
    logger.info(f"{len(done)} rows done before; continuing.")
    rows = process_rows(transcripts, state)
    stats = gather_object([generate_rows(rows, done, audio, corpus_args, args, tokenizer, state)])
    summary = {}
    if state.is_main_process:
        summary = write_results(corpus_args, args, metadata, stats)
        logger.info(f"Summary: {json.dumps(summary)}")
    state.wait_for_everyone()
    return summary


if __name__ == "__main__":
    main()
