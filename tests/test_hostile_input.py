"""Issue 30: non-finite values never train, and one minimum clip length rejects a row, never the job."""

import base64
import http.server
import json
import os
import re
import shutil
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoConfig

import audio_blsp
import generate_continuations
import train_adapter
from audio_blsp import MIN_AUDIO_SECONDS
from blsp_steps.corpora import CONTINUATIONS_METADATA_FILE, TEACHER_IDS, TEACHER_LOGPROBS, CorpusArguments
from blsp_steps.evaluation import EvaluationArguments, evaluate
from blsp_steps.training import NonFiniteTrainingError, StopOnNonFiniteGradients
from modeling_blsp import BlspForConditionalGeneration
from processing_blsp import AudioInputError, BlspProcessor
from tests.helpers.steps import TEMPERATURE, logged_losses, model_flags, run_flags, step_one, write_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHORT_CLIPS = (160, 180, 200, 399)
"""Samples at 16 kHz: below one 25 ms Whisper window (the feature extractor itself fails at 200 or fewer)."""


def rejects(output_dir: str) -> list[dict]:
    with open(os.path.join(output_dir, "audio_rejects-00000.jsonl")) as file:
        return [json.loads(line) for line in file]


# ----------------------------------------------------------------------------------------------------- group 3


@pytest.mark.parametrize(
    "flag, value",
    [("--teacher_temperature", "0"), ("--teacher_temperature", "-1"), ("--teacher_temperature", "nan")]
    + [("--temperature", "0"), ("--temperature", "-0.5")],
)
def test_step1_refuses_temperatures_at_or_below_zero(flag, value, tmp_path):
    argv = ["--dataset_name", "corpus", "--llm_name_or_path", "llm", "--output_dir", str(tmp_path / "out")]
    with pytest.raises(ValueError, match=f"{flag} must be a finite number above 0"):
        generate_continuations.parse_arguments([*argv, "--teacher_top_k", "4", flag, value])


def test_step1_refuses_a_top_k_beyond_the_vocabulary_before_writing(speech_corpus, responsive_llm, tmp_path):
    vocabulary = AutoConfig.from_pretrained(responsive_llm).vocab_size
    output_dir = str(tmp_path / "out")
    with pytest.raises(ValueError, match=f"--teacher_top_k {vocabulary + 1} is beyond the {vocabulary}-token"):
        step_one(speech_corpus, responsive_llm, output_dir, vocabulary + 1)
    assert not os.path.exists(output_dir)


@pytest.mark.parametrize("value", [0.0, -2.0, float("nan")])
def test_step2_refuses_a_kl_temperature_at_or_below_zero(value, tmp_path):
    with pytest.raises(ValueError, match="--kl_temperature must be a finite number above 0"):
        train_adapter.BlspTrainingArguments(output_dir=str(tmp_path), kl_temperature=value, report_to="none")


@pytest.fixture(scope="module")
def cache(speech_corpus, responsive_llm, tmp_path_factory) -> str:
    """Step 1's output with a cached top-4 teacher."""
    return step_one(speech_corpus, responsive_llm, str(tmp_path_factory.mktemp("cache") / "out"), 4)


def edited_cache(cache: str, directory: str, edit_rows=None, recorded_k: int | None = None) -> str:
    """A copy of `cache` whose teacher columns are changed by `edit_rows(ids, logprobs)` (lists of row arrays), or
    whose metadata records another k."""
    shutil.copytree(cache, directory)
    if edit_rows is not None:
        (name,) = os.listdir(os.path.join(directory, "data"))
        path = os.path.join(directory, "data", name)
        table = pq.read_table(path)
        ids = [np.array(row, dtype=np.int32) for row in table[TEACHER_IDS].to_pylist()]
        logprobs = [np.array(row, dtype=np.float16) for row in table[TEACHER_LOGPROBS].to_pylist()]
        edit_rows(ids, logprobs)
        for column, rows in ((TEACHER_IDS, ids), (TEACHER_LOGPROBS, logprobs)):
            field = table.schema.field(column)
            column_rows = pa.array([row.tolist() for row in rows], type=field.type)
            table = table.set_column(table.schema.get_field_index(column), field, column_rows)
        pq.write_table(table, path)
    if recorded_k is not None:
        metadata_path = os.path.join(directory, CONTINUATIONS_METADATA_FILE)
        with open(metadata_path) as file:
            metadata = json.load(file)
        with open(metadata_path, "w") as file:
            json.dump({**metadata, "teacher_top_k": recorded_k}, file)
    return directory


def poison(ids: list[np.ndarray], logprobs: list[np.ndarray]) -> None:
    """Row 0: a NaN log-probability; row 1: a token id beyond the vocabulary; row 2: a negative id; row 3: a
    log-probability above 0."""
    logprobs[0][0, 1] = np.nan
    ids[1][0, 0] = 10**6
    ids[2][-1, 2] = -3
    logprobs[3][1, 0] = 0.5


def test_step2_rejects_rows_of_an_unusable_cached_teacher_and_trains_on_the_others(
    cache, tiny_checkpoints, responsive_llm, tmp_path
):
    dataset = edited_cache(cache, str(tmp_path / "poisoned"), edit_rows=poison)
    output_dir = str(tmp_path / "model")
    flags = (
        "--loss",
        "kl",
        "--kl_temperature",
        str(TEMPERATURE),
        "--teacher",
        "cached",
        "--max_skipped_fraction",
        "0.6",
    )
    train_adapter.main(model_flags(tiny_checkpoints, responsive_llm) + run_flags(dataset, output_dir, 1, *flags))
    by_row = {record["row_id"]: record for record in rejects(output_dir)}
    assert sorted(by_row) == [0, 1, 2, 3]
    assert {record["reason"] for record in by_row.values()} == {"unusable_teacher"}
    assert "not finite or above 0" in by_row[0]["detail"] and "not finite or above 0" in by_row[3]["detail"]
    assert "outside the LLM's vocabulary" in by_row[1]["detail"] and "outside" in by_row[2]["detail"]
    assert all(np.isfinite(loss) for loss in logged_losses(output_dir))
    weights = load_file(os.path.join(output_dir, "model.safetensors"))
    assert all(torch.isfinite(value).all() for value in weights.values())


def test_step2_refuses_a_cache_holding_another_k_than_recorded(cache, tiny_checkpoints, responsive_llm, tmp_path):
    dataset = edited_cache(cache, str(tmp_path / "relabelled"), recorded_k=8)
    output_dir = tmp_path / "model"
    flags = ("--loss", "kl", "--kl_temperature", str(TEMPERATURE))
    with pytest.raises(ValueError, match="records a cached teacher of top-8 but its .* column holds 4 tokens"):
        train_adapter.main(
            model_flags(tiny_checkpoints, responsive_llm) + run_flags(dataset, str(output_dir), 1, *flags)
        )
    assert not (output_dir / "model.safetensors").exists()


def test_a_nan_loss_stops_training_and_saves_nothing(initial_blsp, speech_corpus, tmp_path):
    checkpoint = str(tmp_path / "nan_adapter")
    shutil.copytree(initial_blsp, checkpoint)
    weights = load_file(os.path.join(checkpoint, "model.safetensors"))
    name = next(key for key in weights if key.startswith("adapter.") and weights[key].ndim == 2)
    weights[name][0, 0] = float("nan")
    save_file(weights, os.path.join(checkpoint, "model.safetensors"), metadata={"format": "pt"})
    dataset = write_dataset(str(tmp_path / "rows"), speech_corpus, True)
    output_dir = tmp_path / "model"
    with pytest.raises(NonFiniteTrainingError, match="Optimizer step 1: the loss is nan.*nothing was saved"):
        train_adapter.main(["--model_name_or_path", checkpoint, *run_flags(dataset, str(output_dir), 2)])
    assert not (output_dir / "model.safetensors").exists() and not (output_dir / "README.md").exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_gradient_stops_before_the_optimizer_step(bad):
    model = torch.nn.Linear(2, 2)
    model.weight.grad = torch.zeros(2, 2)
    model.bias.grad = torch.tensor([0.0, bad])
    state = type("State", (), {"global_step": 4})()
    with pytest.raises(NonFiniteTrainingError, match=f"Optimizer step 5: the gradient norm is {bad}"):
        StopOnNonFiniteGradients().on_pre_optimizer_step(None, state, None, model=model)
    model.bias.grad = torch.zeros(2)
    StopOnNonFiniteGradients().on_pre_optimizer_step(None, state, None, model=model)  # finite: goes on


# ----------------------------------------------------------------------------------------------------- group 4


def short_clips(directory) -> list[str]:
    """WAV clips of `SHORT_CLIPS` samples of noise at 16 kHz."""
    names = []
    for samples in SHORT_CLIPS:
        names.append(f"short_{samples}.wav")
        noise = np.random.default_rng(samples).uniform(-0.5, 0.5, samples).astype(np.float32)
        soundfile.write(os.path.join(directory, names[-1]), noise, 16000)
    return names


def test_the_processor_refuses_clips_under_the_minimum_naming_them(saved_blsp, tmp_path):
    assert round(MIN_AUDIO_SECONDS * 16000) == 400
    processor = BlspProcessor.from_pretrained(saved_blsp["qwen2"])
    prompt = processor.render_prompt("Describe the audio.")
    for name in short_clips(tmp_path):
        with pytest.raises(AudioInputError, match=rf"Bad audio file '.*{name}': it is too short .* at least 400"):
            processor(text=prompt, audio=str(tmp_path / name))
    processor(text=prompt, audio=np.random.default_rng(0).uniform(-0.5, 0.5, 400).astype(np.float32))


def test_step2_rejects_short_clips_by_row_and_trains_on_the_others(initial_blsp, speech_corpus, tmp_path):
    source, rows = speech_corpus
    for row in rows[:4]:
        shutil.copy(os.path.join(source, row["file_name"]), tmp_path / row["file_name"])
    names = short_clips(tmp_path)
    corpus = (str(tmp_path), rows[:4] + [{"file_name": name, "text": "the cat"} for name in names])
    dataset = write_dataset(str(tmp_path / "rows"), corpus, True)
    output_dir = str(tmp_path / "model")
    flags = run_flags(dataset, output_dir, 1, "--max_skipped_fraction", "0.6")
    train_adapter.main(["--model_name_or_path", initial_blsp, *flags])
    assert sorted(record["row_id"] for record in rejects(output_dir)) == [4, 5, 6, 7]
    assert all("too short" in record["detail"] for record in rejects(output_dir))
    with open(os.path.join(output_dir, "train_results.json")) as file:
        assert json.load(file)["train_rows"] == 4


def test_evaluation_rejects_short_clips_by_row(saved_blsp, speech_corpus, tmp_path):
    source, rows = speech_corpus
    shutil.copy(os.path.join(source, rows[0]["file_name"]), tmp_path / rows[0]["file_name"])
    names = short_clips(tmp_path)
    records = [rows[0], *({"file_name": name, "text": "the cat"} for name in names)]
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    args = EvaluationArguments(model_name_or_path=saved_blsp["qwen2"], output_dir=str(tmp_path / "eval"), batch_size=5)
    args.max_new_tokens = 2
    metrics = evaluate(CorpusArguments(dataset_name=str(tmp_path)), args)
    assert (metrics["scored"], metrics["rejected"]) == (1, len(SHORT_CLIPS))
    assert [reject["row_id"] for reject in metrics["rejects"]] == [1, 2, 3, 4]
    assert all("too short" in reject["reason"] for reject in metrics["rejects"])


def test_step1_checking_audio_rejects_short_clips_by_row(speech_corpus, tiny_checkpoints, tmp_path):
    source, rows = speech_corpus
    shutil.copy(os.path.join(source, rows[0]["file_name"]), tmp_path / rows[0]["file_name"])
    names = short_clips(tmp_path)
    records = [rows[0], *({"file_name": name, "text": "the cat"} for name in names)]
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    output_dir = str(tmp_path / "out")
    summary = generate_continuations.main(
        ["--dataset_name", str(tmp_path), "--llm_name_or_path", tiny_checkpoints["llama"], "--output_dir", output_dir]
        + ["--max_new_tokens", "2", "--check_audio", "--min_audio_seconds", "0"]
    )
    assert (summary["accepted"], summary["rejected"]) == (1, len(SHORT_CLIPS))
    with open(os.path.join(output_dir, "rejects.jsonl")) as file:
        assert all("too short" in json.loads(line)["detail"] for line in file)


# ----------------------------------------------------------------------------------------------------- groups 1, 2, 7


def audio_turn(source) -> list[dict]:
    return [{"role": "user", "content": [{"type": "audio", "url": source}, {"type": "text", "text": "Transcribe."}]}]


def refusal(processor, source) -> str:
    with pytest.raises(AudioInputError) as error:
        processor.apply_chat_template(audio_turn(source))
    return str(error.value)


def test_a_conversation_reads_only_the_audio_it_carries(saved_blsp, speech_corpus, tmp_path):
    """Paths and URLs are refused without touching the file system or network (the same words for a file that exists,
    one that does not and a closed port); carried audio is read; an allowed folder's files are read, a FIFO never."""
    processor = BlspProcessor.from_pretrained(saved_blsp["qwen2"])
    clip = os.path.join(speech_corpus[0], speech_corpus[1][0]["file_name"])
    missing = os.path.join(speech_corpus[0], "no_such_clip.flac")
    messages = {source: refusal(processor, source) for source in (clip, missing, "http://127.0.0.1:1/x")}
    assert len({message.replace(repr(source), "X") for source, message in messages.items()}) == 1
    assert "read only from the locations the operator allows" in messages[clip]
    with open(clip, "rb") as file:
        data = file.read()
    carried = processor.apply_chat_template(audio_turn(f"data:audio/flac;base64,{base64.b64encode(data).decode()}"))
    assert torch.equal(
        carried["input_ids"], processor.apply_chat_template(audio_turn(base64.b64encode(data).decode()))["input_ids"]
    )
    processor.audio_locations = [speech_corpus[0]]
    assert torch.equal(processor.apply_chat_template(audio_turn(clip))["input_ids"], carried["input_ids"])
    assert "operator allows" in refusal(processor, os.path.join(speech_corpus[0], "..", "elsewhere.flac"))
    fifo = os.path.join(tmp_path, "fifo.wav")
    os.mkfifo(fifo)
    processor.audio_locations = [str(tmp_path)]
    assert "not a regular file" in refusal(processor, fifo)


@pytest.fixture
def audio_server():
    """A local HTTP server: `/big` sends 5,000 bytes at once, `/slow` a byte every 0.2 s for a minute."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            if self.path == "/big":
                self.wfile.write(b"\0" * 5000)
                return
            try:
                for _ in range(300):
                    self.wfile.write(b"\0")
                    self.wfile.flush()
                    time.sleep(0.2)
            except ConnectionError:  # the client gave up, as it should
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_an_allowed_url_is_read_within_a_size_cap_and_a_total_deadline(saved_blsp, audio_server, monkeypatch):
    monkeypatch.setattr(audio_blsp, "MAX_URL_BYTES", 1000)
    monkeypatch.setattr(audio_blsp, "URL_TIMEOUT_SECONDS", 1)
    processor = BlspProcessor.from_pretrained(saved_blsp["qwen2"])
    processor.audio_locations = [audio_server + "/"]
    assert "larger than" in refusal(processor, audio_server + "/big")
    assert "took more than 1 s to download" in refusal(processor, audio_server + "/slow")


def header_only_wav(path, frames: int, rate: int) -> str:
    """A 16-bit WAV of `frames` samples of noise whose header says `rate` Hz."""
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, frames).astype(np.float32)
    soundfile.write(path, noise, rate, subtype="PCM_16")
    return str(path)


def test_a_clips_length_is_checked_from_its_header_before_it_is_decoded(saved_blsp, tmp_path, monkeypatch):
    """A 30 KB WAV whose header says 1 Hz (8 h 20 min at 16 kHz) and one within the hour but beyond the LLM's
    positions are refused before a sample is decoded, whether carried in a conversation or given directly."""
    processor = BlspProcessor.from_pretrained(saved_blsp["qwen2"])
    limit = processor.context_limit
    assert limit is not None and limit < 3600
    hours = header_only_wav(tmp_path / "hours.wav", 30_000, 1)
    beyond_context = header_only_wav(tmp_path / "long.wav", 2 * limit, 2)  # limit seconds: ~3 tokens a second

    def no_decoding(*args, **kwargs):
        raise AssertionError("the clip was decoded")

    monkeypatch.setattr(soundfile.SoundFile, "read", no_decoding)
    with open(hours, "rb") as file:
        carried = base64.b64encode(file.read()).decode()
    assert "30000.0 s long, beyond the processor's max_audio_seconds (3600 s)" in refusal(processor, carried)
    with pytest.raises(AudioInputError, match=rf"long.wav'.*speech tokens, beyond the LLM's {limit} positions"):
        processor(text=processor.render_prompt("Transcribe."), audio=beyond_context)
    monkeypatch.undo()
    processor.max_audio_seconds = 0.5
    with pytest.raises(
        AudioInputError, match="beyond the processor's max_audio_seconds"
    ):  # an array, before resampling
        processor(text=processor.render_prompt("Transcribe."), audio={"array": np.ones(800), "sampling_rate": 1000})


def test_generate_refuses_a_prompt_beyond_the_llms_positions(saved_blsp):
    model = BlspForConditionalGeneration.from_pretrained(saved_blsp["qwen2"]).eval()
    limit = model.config.text_config.max_position_embeddings
    input_ids = torch.ones(1, limit - 4, dtype=torch.long)
    with pytest.raises(ValueError, match=rf"{limit - 4} tokens \(0 of them speech\) \+ 8 new tokens = {limit + 4} "):
        model.generate(input_ids=input_ids, max_new_tokens=8)
    assert model.generate(input_ids=input_ids, max_new_tokens=4, do_sample=False).shape[1] <= limit


def test_base64_looking_paths_in_a_request_stay_unread_and_short_missing_paths_are_called_missing(saved_blsp):
    """`//etc//hosts` is valid base64: in a conversation it is decoded as such, never opened; given directly, a short
    missing path ("abcd", valid base64 of 3 bytes) is reported missing, bad base64 in a data: URI as bad base64."""
    processor = BlspProcessor.from_pretrained(saved_blsp["qwen2"])
    assert os.path.exists("//etc//hosts") and audio_blsp.decode_base64("//etc//hosts") is not None
    message = refusal(processor, "//etc//hosts")
    assert "could not decode it as audio" in message and "audio file" not in message  # bytes, not a file, were read
    with pytest.raises(AudioInputError, match="'abcd': the file does not exist; check the path"):
        processor.load_audio("abcd")
    with pytest.raises(AudioInputError, match="its base64 audio does not decode"):
        processor.load_audio("data:audio/wav;base64,not base64!")
    with pytest.raises(AudioInputError, match="expected real numbers, got an array of complex64"):
        processor.load_audio(np.ones(800, dtype=np.complex64))


# ----------------------------------------------------------------------------------------------------- group 8


@pytest.mark.parametrize("dtype, peak", [(np.float32, 1e30), (np.float64, 1e300), (np.float32, 32767.0)])
def test_samples_far_beyond_full_scale_are_refused_naming_the_input(saved_blsp, dtype, peak, tmp_path):
    """An amplitude of 1e30 gave an empty answer (its log-mel overflows); int16 values given as floats (32767) leave
    Whisper's range: both are refused, naming the input and the peak, as an array and as a float WAV file."""
    processor = BlspProcessor.from_pretrained(saved_blsp["qwen2"])
    clip = (np.sin(np.arange(16000) / 7.0) * peak).astype(dtype)
    shown = re.escape(f"{float(np.abs(clip).max()):.3g}")
    with pytest.raises(AudioInputError, match=f"Bad audio array: its peak amplitude {shown} is far beyond full scale"):
        processor.load_audio(clip)
    if dtype == np.float32:
        path = str(tmp_path / "loud.wav")
        soundfile.write(path, clip, 16000, subtype="FLOAT")
        with pytest.raises(AudioInputError, match=f"Bad audio file '{path}': its peak amplitude"):
            processor(text=processor.render_prompt("Repeat."), audio=path)


def test_samples_a_little_beyond_full_scale_are_accepted(saved_blsp):
    processor = BlspProcessor.from_pretrained(saved_blsp["qwen2"])
    clip = (np.sin(np.arange(16000) / 7.0) * 1.5).astype(np.float32)
    assert np.abs(processor.load_audio(clip)).max() == pytest.approx(1.5, rel=1e-3)
    with pytest.raises(AudioInputError, match="it contains NaN or infinite values"):
        processor.load_audio(np.full(800, np.inf, dtype=np.float32))


@pytest.mark.parametrize("content", [b"", bytes(range(256)) * 16], ids=["empty", "random"])
def test_the_converters_name_an_empty_or_random_weights_file(content, tmp_path):
    """Such a file gave torch's or mmap's message ("cannot mmap an empty file", "unpack requires a buffer"); each
    converter now names the file and what is wrong with it, and writes nothing."""
    from conversion.convert_ctranslate2_whisper_to_hf import read_ctranslate2_variables
    from conversion.convert_gguf_llm_to_hf import convert as convert_gguf
    from conversion.convert_original_blsp_to_hf import read_original_weights

    (tmp_path / "release").mkdir()
    weights = tmp_path / "release" / "pytorch_model.bin"
    weights.write_bytes(content)
    with pytest.raises(ValueError, match=f"{re.escape(str(weights))} is not a PyTorch weights file that can be read"):
        read_original_weights(str(tmp_path / "release"))
    ctranslate2 = tmp_path / "model.bin"
    ctranslate2.write_bytes(content)
    with pytest.raises(ValueError, match=f"{re.escape(str(ctranslate2))}( is empty|: CTranslate2 binary version)"):
        read_ctranslate2_variables(str(ctranslate2))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(content)
    reason = "it is empty" if not content else "it does not start with GGUF's magic bytes"
    with pytest.raises(ValueError, match=f"{re.escape(str(gguf))} is not a GGUF file \\({reason}"):
        convert_gguf(str(gguf), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_a_ctranslate2_file_cut_short_is_named(tmp_path):
    from conversion.convert_ctranslate2_whisper_to_hf import read_ctranslate2_variables

    path = tmp_path / "model.bin"
    path.write_bytes((6).to_bytes(4, "little") + b"\x05\x00")  # version 6, then a string that ends early
    with pytest.raises(ValueError, match=f"{re.escape(str(path))} is not a complete CTranslate2 model.bin"):
        read_ctranslate2_variables(str(path))
