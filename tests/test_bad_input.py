"""Issue 21: bad and changed input never gives a silent wrong answer, and no checkpoint code runs without consent."""

import json
import os
import re
import shutil
import socket

import numpy as np
import pytest
import soundfile
from datasets import load_dataset
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, pipeline

import audio_blsp
import generate_continuations
import processing_blsp
import train_adapter
from blsp_steps import training_data
from blsp_steps.corpora import CorpusArguments
from blsp_steps.evaluation import EvaluationArguments, evaluate
from processing_blsp import AudioInputError, BlspProcessor
from tests.helpers.steps import run_flags, write_dataset

EVIL_TOKENIZER = """
import os
from transformers import PreTrainedTokenizerFast

open(os.environ["BLSP_MARKER"], "w").close()


class EvilTokenizer(PreTrainedTokenizerFast):
    pass
"""


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def continuation_dataset(speech_corpus, tmp_path_factory) -> str:
    """8 clips with continuations, plus one row whose audio cannot be decoded."""
    return write_dataset(str(tmp_path_factory.mktemp("continuations")), speech_corpus, True, unreadable_rows=1)


@pytest.fixture
def checkpoint_with_code(initial_blsp, tmp_path, monkeypatch) -> tuple[str, str]:
    """A copy of a BLSP checkpoint whose tokenizer config names its own tokenizer class file; the file, when run,
    writes a marker file."""
    directory = str(tmp_path / "with_code")
    shutil.copytree(initial_blsp, directory)
    with open(os.path.join(directory, "evil_tokenizer.py"), "w") as file:
        file.write(EVIL_TOKENIZER)
    config_path = os.path.join(directory, "tokenizer_config.json")
    with open(config_path) as file:
        config = json.load(file)
    config["auto_map"] = {"AutoTokenizer": [None, "evil_tokenizer.EvilTokenizer"]}
    with open(config_path, "w") as file:
        json.dump(config, file)
    marker = str(tmp_path / "code_ran")
    monkeypatch.setenv("BLSP_MARKER", marker)
    return directory, marker


def test_step2_runs_no_checkpoint_code_without_consent(checkpoint_with_code, continuation_dataset, tmp_path):
    """Without --trust_remote_code our own classes load the checkpoint and its code file never runs; with it, it
    does (the user's consent)."""
    checkpoint, marker = checkpoint_with_code
    output_dir = str(tmp_path / "out")
    train_adapter.main(["--model_name_or_path", checkpoint, *run_flags(continuation_dataset, output_dir, 1)])
    assert os.path.exists(os.path.join(output_dir, "model.safetensors"))
    assert not os.path.exists(marker)
    BlspProcessor.from_pretrained(checkpoint, trust_remote_code=True)
    assert os.path.exists(marker)


def test_rows_trained_and_rejects_are_reported_by_row(initial_blsp, continuation_dataset, tmp_path):
    """8 readable rows and row 8 unreadable: the metrics and the card say 8 rows, the reject names row 8."""
    train_adapter.main(["--model_name_or_path", initial_blsp, *run_flags(continuation_dataset, str(tmp_path), 1)])
    with open(tmp_path / "train_results.json") as file:
        results = json.load(file)
    assert (results["train_rows"], results["skipped_audio_rows"]) == (8, 1)
    assert "\n8 training rows" in (tmp_path / "README.md").read_text()
    with open(tmp_path / "audio_rejects-00000.jsonl") as file:
        assert [json.loads(line)["row_id"] for line in file] == [8]


def test_step2_with_no_usable_audio_stops_and_saves_nothing(initial_blsp, speech_corpus, tmp_path):
    dataset = str(tmp_path / "broken")
    write_dataset(dataset, (speech_corpus[0], []), True, unreadable_rows=3)
    output_dir = tmp_path / "out"
    with pytest.raises(ValueError, match=r"Only 0 of 3 rows had usable audio and teacher .*--max_skipped_fraction"):
        train_adapter.main(["--model_name_or_path", initial_blsp, *run_flags(dataset, str(output_dir), 1)])
    assert not (output_dir / "model.safetensors").exists()


def test_output_dir_of_a_previous_run_is_refused_overwritten_or_resumed(initial_blsp, continuation_dataset, tmp_path):
    output_dir = str(tmp_path)
    flags = ["--model_name_or_path", initial_blsp, *run_flags(continuation_dataset, output_dir, 1)]
    train_adapter.main(flags)
    with pytest.raises(ValueError, match="already holds files.*--overwrite_output_dir"):
        train_adapter.main(flags)
    train_adapter.main([*flags, "--overwrite_output_dir", "true"])
    with open(tmp_path / "audio_rejects-00000.jsonl") as file:  # the new run's rejects only
        assert len(file.readlines()) == 1
    # A run that saved a checkpoint is resumed from it, as transformers' examples do.
    checkpointed = [*flags, "--overwrite_output_dir", "true", "--save_strategy", "steps", "--save_steps", "1"]
    train_adapter.main(checkpointed)
    state_path = tmp_path / "checkpoint-1" / "trainer_state.json"
    state = json.loads(state_path.read_text())
    state["log_history"][0]["loss"] = 123.0  # a mark that only a resumed run carries on
    state_path.write_text(json.dumps(state))
    more_steps = ["--model_name_or_path", initial_blsp, *run_flags(continuation_dataset, output_dir, 2)]
    train_adapter.main([*more_steps, "--save_strategy", "steps", "--save_steps", "1"])
    with open(tmp_path / "trainer_state.json") as file:
        state = json.load(file)
    assert state["global_step"] == 2
    assert [(entry["step"], entry["loss"] == 123.0) for entry in state["log_history"] if "loss" in entry] == [
        (1, True),
        (2, False),
    ]


def test_audio_beyond_the_llm_context_is_refused_with_its_length(saved_blsp):
    speech_llm = pipeline(model=saved_blsp["llama"], trust_remote_code=True)
    limit = speech_llm.model.config.text_config.max_position_embeddings
    seconds = 30
    while speech_llm.processor.num_speech_tokens(seconds * 16000) < limit:
        seconds += 30
    clip = {"array": np.zeros(seconds * 16000, dtype=np.float32), "sampling_rate": 16000, "path": "long.flac"}
    with pytest.raises(ValueError, match=rf"audio 'long.flac'.* too long .*speech tokens.* beyond the LLM's {limit}"):
        speech_llm(clip, generate_kwargs={"max_new_tokens": 4})


def test_integer_arrays_are_rescaled_by_their_dtype():
    wave = 0.5 * np.sin(np.linspace(0, 200, 16000)).astype(np.float32)
    expected = processing_blsp.load_audio(wave, 16000)
    int16 = np.round(wave * 32768).astype(np.int16)
    np.testing.assert_allclose(processing_blsp.load_audio(int16, 16000), expected, atol=1e-4)
    int32 = np.round(wave * 2**31).astype(np.int32)
    np.testing.assert_allclose(processing_blsp.load_audio({"array": int32}, 16000), expected, atol=1e-4)
    uint8 = np.round(wave * 128 + 128).astype(np.uint8)
    np.testing.assert_allclose(processing_blsp.load_audio(uint8, 16000), expected, atol=1e-2)


@pytest.mark.parametrize("rate", [0, -8000, float("nan")])
def test_invalid_sampling_rates_are_refused(rate):
    with pytest.raises(AudioInputError, match=r"Bad audio array: its sampling rate .* is not a positive"):
        processing_blsp.load_audio({"array": np.zeros(1600, dtype=np.float32), "sampling_rate": rate}, 16000)


@pytest.fixture
def silent_server():
    """A local server that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/clip.wav"
    server.close()


def test_failing_urls_raise_audio_input_error_naming_them(silent_server, monkeypatch):
    monkeypatch.setattr(audio_blsp, "URL_TIMEOUT_SECONDS", 0.5)
    with pytest.raises(AudioInputError, match=re.escape(silent_server) + ".*could not be fetched"):
        processing_blsp.load_audio(silent_server, 16000)
    missing = "http://127.0.0.1:1/missing.wav"  # nothing listens on port 1
    with pytest.raises(AudioInputError, match=re.escape(missing) + ".*could not be fetched"):
        processing_blsp.load_audio(missing, 16000)


def test_evaluation_rejects_rows_beyond_the_llm_context_and_scores_the_others(saved_blsp, speech_corpus, tmp_path):
    source, rows = speech_corpus
    for row in rows[:2]:
        shutil.copy(os.path.join(source, row["file_name"]), tmp_path / row["file_name"])
    clip, rate = soundfile.read(os.path.join(source, rows[0]["file_name"]))
    processor = BlspProcessor.from_pretrained(saved_blsp["qwen2"])
    limit = AutoConfig.from_pretrained(saved_blsp["qwen2"], trust_remote_code=True).text_config.max_position_embeddings
    repeats = limit // processor.num_speech_tokens(len(clip) * 16000 // rate) + 1
    soundfile.write(tmp_path / "long.flac", np.tile(clip, repeats), rate)
    records = [*rows[:2], {"file_name": "long.flac", "text": "long"}]
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    args = EvaluationArguments(
        model_name_or_path=saved_blsp["qwen2"], output_dir=str(tmp_path / "eval"), batch_size=3, max_new_tokens=4
    )
    metrics = evaluate(CorpusArguments(dataset_name=str(tmp_path)), args)
    assert (metrics["rows"], metrics["scored"], metrics["rejected"]) == (3, 2, 1)
    assert metrics["rejects"][0]["row_id"] == 2
    assert re.fullmatch(
        rf"row 2 \(.*long.flac\) is too long for this model: \d+ speech tokens \+ \d+ prompt tokens \+ max_new_tokens "
        rf"4 = \d+ positions, beyond the LLM's {limit}\. Split the audio into shorter clips or lower max_new_tokens\.",
        metrics["rejects"][0]["reason"],
    )


def test_step1_rejects_a_transcript_that_is_not_utf8_and_goes_on(speech_corpus, tiny_checkpoints, tmp_path):
    source, rows = speech_corpus
    for row in rows[:3]:
        shutil.copy(os.path.join(source, row["file_name"]), tmp_path / row["file_name"])
    lines = [json.dumps({"file_name": row["file_name"], "text": row["text"]}).encode() for row in rows[:3]]
    lines[1] = lines[1].replace(b'"text": "', b'"text": "caf\xe9 ')  # Latin-1 bytes in a UTF-8 file
    (tmp_path / "metadata.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    output_dir = str(tmp_path / "out")
    flags = ["--dataset_name", str(tmp_path), "--llm_name_or_path", tiny_checkpoints["qwen2"], "--max_new_tokens", "2"]
    summary = generate_continuations.main([*flags, "--output_dir", output_dir])
    assert (summary["accepted"], summary["rejected"], summary["rejected_by_reason"]) == (
        2,
        1,
        {"undecodable_transcript": 1},
    )
    with open(os.path.join(output_dir, "rejects.jsonl")) as file:
        reject = json.loads(file.read())
    assert reject["row_id"] == 1 and "not UTF-8" in reject["detail"]
    assert load_dataset(output_dir, split="train")["text"] == [rows[0]["text"], rows[2]["text"]]


def test_step1_refuses_max_prompt_tokens_beyond_the_llm_context(tiny_checkpoints, tmp_path):
    flags = ["--dataset_name", str(tmp_path), "--llm_name_or_path", tiny_checkpoints["qwen2"]]
    with pytest.raises(
        ValueError, match=r"--max_prompt_tokens 5000 \+ --max_new_tokens 64 is beyond the 2048 positions"
    ):
        generate_continuations.main([*flags, "--output_dir", str(tmp_path / "out"), "--max_prompt_tokens", "5000"])
    assert not (tmp_path / "out").exists()


def test_a_config_whose_speech_token_is_not_the_tokenizers_is_refused_at_load(saved_blsp, tmp_path):
    directory = shutil.copytree(saved_blsp["qwen2"], tmp_path / "mismatched")
    config = json.loads((directory / "config.json").read_text())
    token_id, config["speech_token_id"] = config["speech_token_id"], 7
    (directory / "config.json").write_text(json.dumps(config))
    match = rf"speech_token_id 7 is not the tokenizer's id of '<speech>', {token_id}: config and tokenizer come from"
    with pytest.raises(ValueError, match=match):
        BlspProcessor.from_pretrained(str(directory))
    with pytest.raises(ValueError, match=match):
        pipeline(model=str(directory), trust_remote_code=True)


def perturb_weights(directory: str) -> None:
    """The same model, other weights: every floating parameter shifted a little, saved in place."""
    weights = load_file(os.path.join(directory, "model.safetensors"))
    save_file(
        {name: value + 0.01 if value.is_floating_point() else value for name, value in weights.items()},
        os.path.join(directory, "model.safetensors"),
        metadata={"format": "pt"},
    )


def write_corpus(speech_corpus, directory, count: int) -> list[dict]:
    """An audiofolder of the first `count` clips; returns its metadata rows."""
    source, rows = speech_corpus
    directory.mkdir()
    for row in rows[:count]:
        shutil.copy(os.path.join(source, row["file_name"]), directory / row["file_name"])
    records = [{"file_name": row["file_name"], "text": row["text"]} for row in rows[:count]]
    (directory / "metadata.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    return records


def test_step1_resume_names_a_changed_setting_and_refuses_other_llm_weights(speech_corpus, tiny_checkpoints, tmp_path):
    write_corpus(speech_corpus, tmp_path / "corpus", 2)
    llm = str(shutil.copytree(tiny_checkpoints["qwen2"], tmp_path / "llm"))
    output_dir = str(tmp_path / "out")
    flags = ["--dataset_name", str(tmp_path / "corpus"), "--llm_name_or_path", llm, "--output_dir", output_dir]
    generate_continuations.main([*flags, "--max_new_tokens", "2"])
    with pytest.raises(ValueError, match=r"other settings .*: generation\.max_new_tokens: 2 -> 3\. Resume it"):
        generate_continuations.main([*flags, "--max_new_tokens", "3"])
    perturb_weights(llm)
    with pytest.raises(ValueError, match=r"other settings .*: llm_fingerprint\.model\.safetensors\.sha256: '"):
        generate_continuations.main([*flags, "--max_new_tokens", "2"])


def test_step2_refuses_a_source_corpus_changed_since_step1(speech_corpus, tiny_checkpoints, tmp_path):
    corpus = tmp_path / "corpus"
    records = write_corpus(speech_corpus, corpus, 4)
    output_dir = str(tmp_path / "continuations")
    flags = ["--dataset_name", str(corpus), "--llm_name_or_path", tiny_checkpoints["qwen2"], "--max_new_tokens", "2"]
    generate_continuations.main([*flags, "--output_dir", output_dir])
    records[1], records[2] = records[2], records[1]  # the source reordered after step 1
    (corpus / "metadata.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    match = r"changed since step 1: 2 row\(s\) hold another transcript .*rows \[1, 2\]; row 1: "
    match += re.escape(repr(records[2]["text"])) + " then"
    data_args = train_adapter.DataArguments(dataset_name=[output_dir])
    with pytest.raises(ValueError, match=match):
        training_data.prepare_dataset(data_args.dataset_name, "train", data_args, {"ce"}, "length")
    data_args = train_adapter.DataArguments(dataset_name=[output_dir], streaming=True)
    training_args = train_adapter.BlspTrainingArguments(output_dir=str(tmp_path / "model"), report_to="none")
    stream, _ = training_data.stream_datasets(data_args, training_args)
    with pytest.raises(ValueError, match=r"changed since step 1: 1 row\(s\) hold another transcript .*rows \[1\]"):
        list(stream)


def test_step2_refuses_to_resume_a_checkpoint_of_other_model_weights(initial_blsp, continuation_dataset, tmp_path):
    model = str(shutil.copytree(initial_blsp, tmp_path / "model"))
    output_dir = str(tmp_path / "out")
    checkpoints = ["--save_strategy", "steps", "--save_steps", "1"]
    train_adapter.main(["--model_name_or_path", model, *run_flags(continuation_dataset, output_dir, 1), *checkpoints])
    assert os.path.isfile(os.path.join(output_dir, "checkpoint-1", "blsp_models.json"))
    perturb_weights(model)
    more_steps = ["--model_name_or_path", model, *run_flags(continuation_dataset, output_dir, 2), *checkpoints]
    with pytest.raises(
        ValueError,
        match=r"checkpoint-1 was saved by a run that started from other models: "
        r"model_name_or_path\.model\.safetensors\.sha256: '",
    ):
        train_adapter.main(more_steps)
