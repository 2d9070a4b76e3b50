"""Runs of the two steps for tests: step 2's datasets and flags, step 1 with a cached teacher, untrained checkpoints."""

import json
import os

import torch
from datasets import Audio, Dataset

import generate_continuations
from modeling_blsp import BlspForConditionalGeneration
from processing_blsp import BlspProcessor

INSTRUCTION = "Continue the following text."
METADATA = {"instruction": INSTRUCTION, "prompt_layout": "instruction_first", "system_prompt": None}
# A fixed continuation per clip, made of words the tiny tokenizer knows.
CONTINUATIONS = ["the cat sat on the mat", "a quick brown fox", "the bird in the tree", "please translate the text"]
MAX_NEW_TOKENS = 8
TEMPERATURE = 2.0


def save_untrained_blsp(whisper: str, llm: str, directory: str) -> str:
    """A BLSP checkpoint (model + processor) of `whisper` and `llm`, its adapter freshly seeded, in `directory`."""
    torch.manual_seed(0)
    model = BlspForConditionalGeneration.from_speech_text_pretrained(whisper, llm)
    model.save_pretrained(directory)
    BlspProcessor.from_speech_text_pretrained(whisper, llm, config=model.config).save_pretrained(directory)
    return directory


def continuation_rows(corpus, with_continuation: bool, unreadable_rows: int = 0) -> Dataset:
    """A dataset as generate_continuations.py makes it: audio as {"path", "bytes"}, prompt metadata in the
    description."""
    corpus_dir, rows = corpus
    records = {"row_id": [], "audio": [], "text": [], "continuation": []}
    for index, row in enumerate(rows):
        with open(os.path.join(corpus_dir, row["file_name"]), "rb") as file:
            audio = {"path": row["file_name"], "bytes": file.read()}
        records["row_id"].append(index)
        records["audio"].append(audio)
        records["text"].append(row["text"])
        records["continuation"].append(CONTINUATIONS[index % len(CONTINUATIONS)])
    for index in range(unreadable_rows):
        records["row_id"].append(len(rows) + index)
        records["audio"].append({"path": "broken.flac", "bytes": b"this is not audio"})
        records["text"].append("the cat")
        records["continuation"].append("sat on the mat")
    if not with_continuation:
        del records["continuation"]
    dataset = Dataset.from_dict(records).cast_column("audio", Audio(decode=False))
    dataset.info.description = json.dumps(METADATA)
    return dataset


def write_dataset(directory: str, corpus, with_continuation: bool, unreadable_rows: int = 0) -> str:
    continuation_rows(corpus, with_continuation, unreadable_rows).save_to_disk(directory)
    return directory


def model_flags(tiny_checkpoints, llm: str) -> list[str]:
    return ["--speech_encoder_name_or_path", tiny_checkpoints["whisper"], "--llm_name_or_path", llm]


def run_settings(dataset: str, output_dir: str, max_steps: int) -> dict:
    """Settings shared by every run: every row in one batch (so that successive losses are of the same batch), a
    high constant learning rate, a log entry per step, CPU."""
    return {
        "dataset_name_or_path": dataset,
        "output_dir": output_dir,
        "max_steps": max_steps,
        "per_device_train_batch_size": 16,
        "learning_rate": 1e-2,
        "lr_scheduler_type": "constant",
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "seed": 0,
        "disable_tqdm": True,
    }


def run_flags(dataset: str, output_dir: str, max_steps: int, *extra: str) -> list[str]:
    settings = run_settings(dataset, output_dir, max_steps)
    return [item for key, value in settings.items() for item in (f"--{key}", str(value))] + list(extra)


def logged_losses(output_dir: str) -> list[float]:
    with open(os.path.join(output_dir, "trainer_state.json")) as file:
        return [entry["loss"] for entry in json.load(file)["log_history"] if "loss" in entry]


def step_one(speech_corpus, llm: str, output_dir: str, top_k: int, *flags: str) -> str:
    """Continuations of the clips by `llm`, left-padded batches of 3, with a cached teacher of `top_k`."""
    clips, rows = speech_corpus
    corpus = os.path.join(output_dir + "-corpus.jsonl")
    with open(corpus, "w") as file:
        for row in rows:
            file.write(json.dumps({"audio": os.path.join(clips, row["file_name"]), "text": row["text"]}) + "\n")
    generate_continuations.main(
        ["--dataset_name", corpus, "--llm_name_or_path", llm, "--output_dir", output_dir, "--batch_size", "3"]
        + ["--max_new_tokens", str(MAX_NEW_TOKENS), "--teacher_top_k", str(top_k)]
        + ["--teacher_temperature", str(TEMPERATURE), *flags]
    )
    return output_dir
