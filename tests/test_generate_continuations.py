"""Step 1 (generate_continuations.py): input kinds, templates, greedy equality, rejects, resuming, processes, Hub."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile
import torch
import yaml
from datasets import Audio, Dataset, load_dataset
from transformers import AutoModelForCausalLM, AutoTokenizer

import generate_continuations
from blsp_steps.corpora import CONTINUATIONS_METADATA_FILE, join_audio
from blsp_steps.rejects import text_rejection
from processing_blsp import CONTINUATION_INSTRUCTION, load_audio, render_prompt
from tests.helpers.launching import two_process_launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "generate_continuations.py")
MAX_NEW_TOKENS = 6


def run_script(dataset_name: str, llm: str, output_dir: str, *flags: str) -> dict:
    """Run step 1 in this process; returns its summary."""
    argv = ["--dataset_name", dataset_name, "--llm_name_or_path", llm, "--output_dir", output_dir]
    return generate_continuations.main([*argv, "--max_new_tokens", str(MAX_NEW_TOKENS), *flags])


def saved_rows(output_dir: str) -> list[dict]:
    """The output's rows (`row_id`, `text`, `continuation`), loaded with `load_dataset`."""
    return list(load_dataset(str(output_dir), split="train"))


def saved_settings(output_dir: str) -> dict:
    with open(os.path.join(output_dir, CONTINUATIONS_METADATA_FILE)) as file:
        return json.load(file)


def copy_clips(speech_corpus, directory) -> list[dict]:
    """The shared clips copied into `directory` (so metadata can be written next to them); returns their rows."""
    source, rows = speech_corpus
    os.makedirs(directory, exist_ok=True)
    for row in rows:
        shutil.copy(os.path.join(source, row["file_name"]), os.path.join(directory, row["file_name"]))
    return rows


def write_jsonl(path, rows: list[dict]) -> str:
    with open(path, "w") as file:
        file.writelines(json.dumps(row) + "\n" for row in rows)
    return str(path)


def subprocess_env() -> dict:
    return {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def build_input_kinds(speech_corpus, root) -> dict[str, list[str]]:
    """The same clips and transcripts as each input kind; values are the corpus flags."""
    rows = copy_clips(speech_corpus, root / "clips")
    clips = root / "clips"
    file_rows = [{"file": f"clips/{row['file_name']}", "sentence": row["text"]} for row in rows]
    columns = ["--audio_column_name", "file", "--text_column_name", "sentence"]
    Dataset.from_list(file_rows).to_csv(root / "corpus.csv", index=False)
    Dataset.from_list(file_rows).to_parquet(root / "corpus.parquet")
    write_jsonl(root / "corpus.jsonl", file_rows)
    with open(clips / "metadata.csv", "w") as file:
        file.write("file_name,text\n" + "".join(f"{row['file_name']},{row['text']}\n" for row in rows))
    split_dir = root / "by_split" / "train"
    copy_clips(speech_corpus, split_dir)
    write_jsonl(split_dir / "metadata.jsonl", rows)
    paths = [str(clips / row["file_name"]) for row in rows]
    Dataset.from_dict({"audio": paths, "text": [row["text"] for row in rows]}).cast_column(
        "audio", Audio(decode=False)
    ).save_to_disk(str(root / "saved"))
    return {
        "audiofolder_csv": ["--dataset_name", str(clips)],
        "audiofolder_jsonl_split": ["--dataset_name", str(root / "by_split")],
        "save_to_disk": ["--dataset_name", str(root / "saved")],
        "csv": ["--dataset_name", str(root / "corpus.csv"), *columns],
        "jsonl": ["--dataset_name", str(root / "corpus.jsonl"), *columns],
        "parquet": ["--dataset_name", str(root / "corpus.parquet"), *columns],
    }


def test_every_input_kind_gives_the_same_dataset(speech_corpus, tiny_checkpoints, tmp_path):
    kinds = build_input_kinds(speech_corpus, tmp_path)
    source, rows = speech_corpus
    results = {}
    for kind, corpus_flags in kinds.items():
        output_dir = str(tmp_path / f"out_{kind}")
        flags = [*corpus_flags, "--llm_name_or_path", tiny_checkpoints["llama"], "--output_dir", output_dir]
        if kind == "parquet":  # the same settings as a YAML file
            config = {flags[i].lstrip("-"): flags[i + 1] for i in range(0, len(flags), 2)}
            config["max_new_tokens"] = MAX_NEW_TOKENS
            (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
            summary = generate_continuations.main([str(tmp_path / "config.yaml")])
        else:
            summary = generate_continuations.main([*flags, "--max_new_tokens", str(MAX_NEW_TOKENS)])
        assert (summary["accepted"], summary["rejected"]) == (len(rows), 0), kind
        results[kind] = saved_rows(output_dir)
    expected = results.pop("audiofolder_csv")
    assert [row["row_id"] for row in expected] == list(range(len(rows)))
    assert [row["text"] for row in expected] == [row["text"] for row in rows]
    assert list(expected[0]) == ["row_id", "text", "continuation"]  # no copy of the audio
    for kind, result in results.items():
        assert result == expected, kind
    settings = saved_settings(str(tmp_path / "out_csv"))
    assert settings["source"]["dataset_name"] == str(tmp_path / "corpus.csv")
    joined = join_audio(load_dataset(str(tmp_path / "out_csv"), split="train"), settings["source"])
    assert joined.column_names == ["row_id", "audio", "text", "continuation"]
    assert joined["continuation"] == [row["continuation"] for row in expected]
    clip = load_audio(joined[0]["audio"], 16000)
    assert np.array_equal(clip, load_audio(os.path.join(source, rows[0]["file_name"]), 16000))


@pytest.mark.parametrize(
    "llm, flags, template",
    [
        ("llama", [], "blsp_base"),
        (
            "qwen2",
            ["--prompt_layout", "speech_first", "--system_prompt", "You are a helpful assistant."],
            "chat_template",
        ),
    ],
)
def test_greedy_continuations_equal_plain_generate(speech_corpus, tiny_checkpoints, tmp_path, llm, flags, template):
    clips, rows = speech_corpus
    write_jsonl(tmp_path / "corpus.jsonl", [{**row, "audio": os.path.join(clips, row["file_name"])} for row in rows])
    output_dir = str(tmp_path / "out")
    run_script(str(tmp_path / "corpus.jsonl"), tiny_checkpoints[llm], output_dir, "--batch_size", "3", *flags)
    dataset = load_dataset(output_dir, split="train")
    metadata = saved_settings(output_dir)
    layout = flags[1] if flags else "instruction_first"
    system_prompt = flags[3] if flags else None
    tokenizer = AutoTokenizer.from_pretrained(tiny_checkpoints[llm])
    assert metadata["template"] == template and metadata["prompt_layout"] == layout
    assert metadata["prompt_template"] == render_prompt(
        tokenizer, CONTINUATION_INSTRUCTION, "{transcript}", layout, system_prompt
    )
    assert metadata["generation"]["max_new_tokens"] == MAX_NEW_TOKENS and not metadata["generation"]["do_sample"]
    model = AutoModelForCausalLM.from_pretrained(tiny_checkpoints[llm]).eval()
    for row in dataset:
        prompt = render_prompt(tokenizer, CONTINUATION_INSTRUCTION, row["text"], layout, system_prompt)
        inputs = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            output = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        new_tokens = output[0, inputs["input_ids"].shape[1] :]
        assert row["continuation"] == tokenizer.decode(new_tokens, skip_special_tokens=True).strip()


def test_sampling_is_reproducible_from_its_seed(speech_corpus, tiny_checkpoints, tmp_path):
    clips, rows = speech_corpus
    corpus = write_jsonl(
        tmp_path / "corpus.jsonl", [{**row, "audio": os.path.join(clips, row["file_name"])} for row in rows]
    )
    flags = ["--do_sample", "--temperature", "5.0", "--top_p", "0.99", "--seed", "7"]
    continuations = []
    for run in ("first", "second"):
        run_script(corpus, tiny_checkpoints["llama"], str(tmp_path / run), *flags)
        continuations.append([row["continuation"] for row in saved_rows(str(tmp_path / run))])
    run_script(corpus, tiny_checkpoints["llama"], str(tmp_path / "greedy"))
    assert continuations[0] == continuations[1] != [row["continuation"] for row in saved_rows(str(tmp_path / "greedy"))]
    assert saved_settings(str(tmp_path / "first"))["generation"]["do_sample"]


def build_bad_corpus(speech_corpus, directory) -> list[dict]:
    """An audiofolder of four good rows, then 14 with broken audio or transcripts; returns its metadata rows."""
    rows = copy_clips(speech_corpus, directory)
    good = [rows[index]["file_name"] for index in range(8)]
    (directory / "corrupt.flac").write_bytes(b"not audio at all" * 64)
    (directory / "empty.flac").write_bytes(b"")
    soundfile.write(directory / "no_frames.wav", np.zeros(0, dtype=np.float32), 16000)
    soundfile.write(directory / "nan.wav", np.full(16000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    soundfile.write(directory / "silent.flac", np.zeros(16000, dtype=np.float32), 16000)
    speech = load_audio(str(directory / good[0]), 16000)
    soundfile.write(directory / "short.flac", speech[8000:8800], 16000)
    text = rows[0]["text"]
    metadata = [{"file_name": name, "text": row["text"]} for name, row in zip(good[:4], rows)]
    metadata += [
        {"file_name": name, "text": text}
        for name in ("corrupt.flac", "empty.flac", "no_frames.wav", "nan.wav", "missing.flac")
    ]
    metadata += [
        {"file_name": "silent.flac", "text": text},
        {"file_name": "short.flac", "text": text},
        {"file_name": None, "text": text},
        {"file_name": good[4], "text": ""},
        {"file_name": good[5], "text": "   "},
        {"file_name": good[6], "text": None},
        {"file_name": good[7], "text": "[noise] uh um"},  # empty once normalised
        {"file_name": "corrupt.flac", "text": ""},  # rejected once, for its transcript
        {"file_name": good[4], "text": " ".join([text] * 30)},
    ]
    write_jsonl(directory / "metadata.jsonl", metadata)
    return metadata


BAD_CORPUS_REASONS = {
    "unusable_audio": 5,
    "silent_audio": 1,
    "short_audio": 1,
    "missing_audio": 1,
    "empty_transcript": 5,
    "long_prompt": 1,
}


def test_bad_rows_are_rejected_and_counted(speech_corpus, tiny_checkpoints, tmp_path):
    metadata = build_bad_corpus(speech_corpus, tmp_path / "corpus")
    output_dir = tmp_path / "out"
    flags = ["--normalize_transcripts", "--max_prompt_tokens", "100", "--batch_size", "3"]
    flags += ["--check_audio", "--dataloader_num_workers", "2"]  # audio checked in DataLoader workers
    summary = run_script(str(tmp_path / "corpus"), tiny_checkpoints["qwen2"], str(output_dir), *flags)
    assert summary["rows"] == len(metadata) == 18
    assert (summary["accepted"], summary["rejected"]) == (4, 14)
    assert summary["rejected_by_reason"] == BAD_CORPUS_REASONS
    assert [row["row_id"] for row in saved_rows(output_dir)] == [0, 1, 2, 3]
    with open(output_dir / "rejects.jsonl") as file:
        rejects = [json.loads(line) for line in file]
    assert [reject["row_id"] for reject in rejects] == list(range(4, 18))
    assert [os.path.basename(reject["source"]) for reject in rejects[:3]] == [
        "corrupt.flac",
        "empty.flac",
        "no_frames.wav",
    ]
    assert all(reject["detail"] for reject in rejects)
    assert text_rejection(3.5)[0] == "non_text_transcript" and text_rejection("a") is None


KILL_AFTER_TWO_BATCHES = """
import json, os, signal, sys
import generate_continuations
from blsp_steps import rejects
appends = 0
append = rejects.JsonlLog.append
def append_then_die(self, records):
    global appends
    if records and "continuations" in self.file.name:
        appends += 1
        if appends == 3:  # half a batch written, then kill -9
            text = "".join(json.dumps(record) + "\\n" for record in records)
            self.file.write(text[: len(text) // 2])
            self.file.flush()
            os.kill(os.getpid(), signal.SIGKILL)
    append(self, records)
rejects.JsonlLog.append = append_then_die
generate_continuations.main(sys.argv[1:])
"""


def part_row_ids(output_dir) -> list[int]:
    """The row ids of every complete record of an output's parts (accepted and rejected), sorted."""
    kinds = ("continuations", "rejects")
    return sorted(record["row_id"] for kind in kinds for record in generate_continuations.read_parts(output_dir, kind))


def test_killed_run_resumes_to_the_uninterrupted_result(speech_corpus, tiny_checkpoints, tmp_path):
    clips, rows = speech_corpus
    metadata = [{"audio": os.path.join(clips, row["file_name"]), "text": row["text"]} for row in rows]
    metadata.insert(3, {"audio": metadata[0]["audio"], "text": ""})
    corpus = write_jsonl(tmp_path / "corpus.jsonl", metadata)
    flags = ["--llm_name_or_path", tiny_checkpoints["llama"], "--batch_size", "2"]
    flags += ["--max_new_tokens", str(MAX_NEW_TOKENS), "--dataset_name", corpus]
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_TWO_BATCHES, *flags, "--output_dir", str(tmp_path / "resumed")],
        env=subprocess_env(),
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -9, killed.stderr[-3000:]
    with open(tmp_path / "resumed" / "parts" / "continuations-00000.jsonl") as file:
        written = file.read()
    assert not written.endswith("\n")  # a torn line is there
    assert written.count("\n") >= 4 and not os.path.exists(tmp_path / "resumed" / "data")

    resumed = generate_continuations.main([*flags, "--output_dir", str(tmp_path / "resumed")])
    assert resumed["generated_rows_this_run"] == len(rows) - written.count("\n")
    uninterrupted = generate_continuations.main([*flags, "--output_dir", str(tmp_path / "once")])
    assert (
        (resumed["accepted"], resumed["rejected"]) == (uninterrupted["accepted"], uninterrupted["rejected"]) == (8, 1)
    )
    assert saved_rows(str(tmp_path / "resumed")) == saved_rows(str(tmp_path / "once"))
    assert part_row_ids(tmp_path / "resumed") == list(range(len(metadata)))  # every row written exactly once

    other_settings = [*flags, "--output_dir", str(tmp_path / "resumed"), "--max_new_tokens", "3"]
    with pytest.raises(ValueError, match="other settings"):
        generate_continuations.main(other_settings)
    assert generate_continuations.main([*other_settings, "--overwrite_output_dir"])["generated_rows_this_run"] == 8


def test_two_processes_give_the_same_dataset_as_one(speech_corpus, tiny_checkpoints, tmp_path):
    clips, rows = speech_corpus
    corpus = write_jsonl(
        tmp_path / "corpus.jsonl",
        [{"audio": os.path.join(clips, row["file_name"]), "text": row["text"]} for row in rows],
    )
    flags = ["--dataset_name", corpus, "--llm_name_or_path", tiny_checkpoints["qwen2"], "--batch_size", "3"]
    flags += ["--max_new_tokens", str(MAX_NEW_TOKENS)]
    launch = two_process_launch()
    two = subprocess.run(
        [*launch, SCRIPT, *flags, "--output_dir", str(tmp_path / "two")],
        env=subprocess_env(),
        capture_output=True,
        text=True,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    parts = [tmp_path / "two" / "parts" / f"continuations-0000{rank}.jsonl" for rank in (0, 1)]
    assert all(part.stat().st_size > 0 for part in parts) and part_row_ids(tmp_path / "two") == list(range(len(rows)))
    generate_continuations.main([*flags, "--output_dir", str(tmp_path / "one")])
    assert saved_rows(str(tmp_path / "two")) == saved_rows(str(tmp_path / "one"))


HUB_LOAD = """
import json
from datasets import load_dataset
from huggingface_hub import hf_hub_download
dataset = load_dataset("alice/continuations", split="train")
metadata = json.load(open(hf_hub_download("alice/continuations", "blsp_continuations.json", repo_type="dataset")))
rows = list(dataset)
print(json.dumps({"rows": rows, "llm": metadata["llm_name_or_path"]}))
"""
HUB_PUSH_CORPUS = """
import json, sys
from datasets import Audio, Dataset
Dataset.from_list(json.loads(sys.argv[1])).cast_column("audio", Audio(decode=False)).push_to_hub("alice/speech")
"""


def test_hub_corpus_in_and_push_to_hub_out(local_hub, speech_corpus, tiny_checkpoints, tmp_path):  # noqa: F811
    clips, rows = speech_corpus
    env = local_hub.subprocess_env(tmp_path / "hf_home")
    env["PYTHONPATH"] = ROOT
    corpus_rows = [{"audio": os.path.join(clips, row["file_name"]), "text": row["text"]} for row in rows]
    pushed = subprocess.run(
        [sys.executable, "-c", HUB_PUSH_CORPUS, json.dumps(corpus_rows)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    flags = ["--llm_name_or_path", tiny_checkpoints["llama"], "--max_new_tokens", str(MAX_NEW_TOKENS)]
    script = subprocess.run(
        [sys.executable, SCRIPT, "--dataset_name", "alice/speech", *flags, "--output_dir", str(tmp_path / "hub")]
        + ["--push_to_hub", "--hub_dataset_id", "alice/continuations"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert script.returncode == 0, script.stderr[-3000:]
    loaded = json.loads(local_hub.run_python(HUB_LOAD, tmp_path / "hf_home").strip().splitlines()[-1])
    assert loaded["llm"] == tiny_checkpoints["llama"]
    corpus = write_jsonl(tmp_path / "corpus.jsonl", corpus_rows)
    generate_continuations.main(["--dataset_name", corpus, *flags, "--output_dir", str(tmp_path / "local")])
    assert loaded["rows"] == saved_rows(str(tmp_path / "local"))
