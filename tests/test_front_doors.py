"""transformers' own front doors on a saved checkpoint, each in a fresh process, from another folder, with the project
not importable: `pipeline("any-to-any")` (through `AutoModelForMultimodalLM`) gives our pipeline's greedy answers, one
conversation at a time and batched, and `transformers serve --trust-remote-code` gives them to chat completions with
`input_audio` parts, streamed or not.

The checkpoint is the demo's trained model (`world/models/blsp`) saved afresh by this repository's code, so that its
answers are words (a random tiny LLM answers bytes that a stream cannot split into characters) and its code is ours.
"""

import base64
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import soundfile

from modeling_blsp import BlspForConditionalGeneration
from processing_blsp import BlspProcessor
from tests.helpers.launching import free_port, user_env
from world import build_demo, language

INSTRUCTION = language.TRANSCRIBE_INSTRUCTION
GREEDY = {"do_sample": False, "max_new_tokens": 16}
WORLD_CLIPS = os.path.join(build_demo.build_world.WORLD_DIR, "data", "speech", "test_seen_voice")

ANSWERS = r"""
import json, sys
from transformers import AutoModelForMultimodalLM, pipeline

try:
    import modeling_blsp  # noqa: F401
    sys.exit("the project must not be importable here")
except ImportError:
    pass

path, adapter_only, conversations, greedy = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
instruction = conversations[0][0]["content"][1]["text"]
ours = pipeline(model=path, trust_remote_code=True)
any_to_any = pipeline("any-to-any", model=path, trust_remote_code=True)
print(json.dumps({
    "model": type(AutoModelForMultimodalLM.from_pretrained(path, trust_remote_code=True)).__name__,
    "pipeline": type(any_to_any).__name__,
    "ours": [ours(conversation, **greedy)["generated_text"] for conversation in conversations],
    "ours_batched": [r["generated_text"] for r in ours(conversations, batch_size=len(conversations), **greedy)],
    "one": any_to_any(text=conversations[0], generate_kwargs=greedy),
    "each": any_to_any(text=conversations, generate_kwargs=greedy, return_full_text=False),
    "batched": any_to_any(
        text=conversations, generate_kwargs=greedy, return_full_text=False, batch_size=len(conversations)
    ),
    "adapter_only": pipeline("any-to-any", model=adapter_only, trust_remote_code=True)(
        text=conversations, generate_kwargs=greedy, return_full_text=False
    ),
    "rendered": any_to_any(
        text=any_to_any.processor.render_prompt(instruction),
        audio=conversations[0][0]["content"][0]["path"],
        generate_kwargs=greedy,
        return_full_text=False,
    ),
}))
"""


def fresh_env(tmp_path, audio_locations: list[str] = ()) -> dict[str, str]:
    """A user's environment: the project not importable, offline, caches of its own, no CLI update check; the
    folders a conversation's audio paths may be read from (none: the server's default)."""
    env = user_env(
        "PYTHONPATH",
        "BLSP_AUDIO_LOCATIONS",
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf_home"),
        HF_HUB_DISABLE_UPDATE_CHECK="1",
        OMP_NUM_THREADS="1",
    )
    if audio_locations:
        env["BLSP_AUDIO_LOCATIONS"] = ",".join(audio_locations)
    return env


def conversation(clip: str) -> list[dict]:
    return [{"role": "user", "content": [{"type": "audio", "path": clip}, {"type": "text", "text": INSTRUCTION}]}]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> str:
    """The demo's trained model and processor, saved by this repository's code (config, auto_map, code files)."""
    directory = str(tmp_path_factory.mktemp("demo_blsp"))
    BlspForConditionalGeneration.from_pretrained(build_demo.DEMO_DIR).save_pretrained(directory)
    BlspProcessor.from_pretrained(build_demo.DEMO_DIR).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def adapter_only_checkpoint(checkpoint, tmp_path_factory) -> str:
    """The same model saved adapter-only, its config naming the world's speech model and LLM as its bases."""
    directory = str(tmp_path_factory.mktemp("demo_blsp_adapter_only"))
    model = BlspForConditionalGeneration.from_pretrained(checkpoint)
    model.config.adapter_only = True
    model.config.speech_model_name_or_path = build_demo.build_world.SPEECH_MODEL_DIR
    model.config.text_model_name_or_path = build_demo.build_world.LLM_DIR
    model.save_pretrained(directory)
    BlspProcessor.from_pretrained(checkpoint).save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[str]:
    """A WAV and two FLAC clips of the world's speech, of three lengths."""
    with open(os.path.join(WORLD_CLIPS, "metadata.jsonl")) as file:
        names = [json.loads(line)["file_name"] for line in file][:3]
    flacs = [os.path.join(WORLD_CLIPS, name) for name in names]
    wav = str(tmp_path_factory.mktemp("wav") / "clip.wav")
    samples, rate = soundfile.read(flacs[0])
    soundfile.write(wav, samples, rate, subtype="PCM_16")
    return [wav, *flacs[1:]]


@pytest.fixture(scope="module")
def answers(checkpoint, adapter_only_checkpoint, clips, tmp_path_factory) -> dict:
    """Our pipeline's and `pipeline("any-to-any")`'s answers to one conversation per clip, from a fresh process."""
    workdir = tmp_path_factory.mktemp("elsewhere")
    conversations = [conversation(clip) for clip in clips]
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            ANSWERS,
            checkpoint,
            adapter_only_checkpoint,
            json.dumps(conversations),
            json.dumps(GREEDY),
        ],
        cwd=workdir,
        env=fresh_env(workdir, sorted({os.path.dirname(clip) for clip in clips})),  # any-to-any reads the paths
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "is not supported for any-to-any" not in completed.stderr
    return {**json.loads(completed.stdout.strip().splitlines()[-1]), "conversations": conversations}


def test_any_to_any_gives_our_pipelines_greedy_answers(answers):
    assert (answers["model"], answers["pipeline"]) == ("BlspForConditionalGeneration", "AnyToAnyPipeline")
    ours, conversations = answers["ours"], answers["conversations"]
    assert all(ours) and len(set(ours)) == len(ours)  # distinct, non-empty answers: the comparisons mean something
    assert answers["ours_batched"] == ours
    # One conversation: the conversation continued by the assistant's answer (return_full_text defaults to True).
    (one,) = answers["one"]
    assert one["input_text"] == conversations[0]
    assert one["generated_text"][:-1] == conversations[0] and one["generated_text"][-1]["role"] == "assistant"
    assert one["generated_text"][-1]["content"] == ours[0]  # as our pipeline strips it: no leading space (issue 30)
    # A list of conversations, run one at a time and in one padded batch: one list of results per conversation.
    for key in ("each", "batched"):
        assert [result["input_text"] for (result,) in answers[key]] == conversations
        assert [result["generated_text"] for (result,) in answers[key]] == ours
    # An adapter-only checkpoint, its bases loaded by the names its config records.
    assert [result["generated_text"] for (result,) in answers["adapter_only"]] == ours
    # The non-chat form: the prompt as the processor renders it, and the audio.
    assert [result["generated_text"] for result in answers["rendered"]] == ours[:1]


def test_any_to_any_decoding_strips_the_answer_as_our_pipeline_does():
    """Issue 30: `pipeline("any-to-any")` decodes the whole row and the prompt, and keeps what follows the prompt;
    with the demo's word-level tokenizer that kept a leading space (' the goat'), which our pipeline strips. Rows left
    padded in a batch, a prompt alone (its own decoding) and a row past the answer's end come out as ours do."""
    processor = BlspProcessor.from_pretrained(build_demo.DEMO_DIR)
    tokenizer = processor.tokenizer
    short, long = (processor.prompt_ids(processor.render_prompt(text)) for text in ("Repeat.", INSTRUCTION))
    answer = tokenizer("the goat helps the goat", add_special_tokens=False)["input_ids"]
    rows = [[tokenizer.pad_token_id] * (len(long) - len(short)) + short, long]  # a left-padded batch of prompts
    full = [row + answer + [tokenizer.eos_token_id] for row in rows]
    generated = processor.post_process_multimodal_output(np.array(full))
    decoded_prompts = processor.post_process_multimodal_output(np.array(rows))
    kept = [text[text.find(prompt) + len(prompt) :] for text, prompt in zip(generated, decoded_prompts)]
    assert tokenizer.decode(full[0], skip_special_tokens=True).endswith(" the goat helps the goat")
    assert kept == ["the goat helps the goat", "the goat helps the goat"]
    assert decoded_prompts[0] == tokenizer.decode(rows[0], skip_special_tokens=True)
    assert processor.post_process_multimodal_output(full[0]) == generated[0]


def wait_until_healthy(url: str, process: subprocess.Popen, log_path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            with open(log_path) as log:
                pytest.fail(f"transformers serve exited with {process.returncode}:\n{log.read()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.5)
    pytest.fail(f"transformers serve did not answer /health within {timeout} s")


def post_chat(url: str, model: str, audio_part: dict, stream: bool = False, max_tokens: int | None = None) -> str:
    """POST an OpenAI chat completion whose user message holds `audio_part` and the instruction; the response body."""
    content = [audio_part, {"type": "text", "text": INSTRUCTION}]
    body = {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": max_tokens or GREEDY["max_new_tokens"],
        "temperature": 0,
        "stream": stream,
    }
    request = urllib.request.Request(
        f"{url}/v1/chat/completions", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=300) as response:
        return response.read().decode()


def input_audio(clip: str, audio_format: str | None = None) -> dict:
    """The clip as an OpenAI `input_audio` part: base64, with a format when given."""
    with open(clip, "rb") as file:
        part = {"data": base64.b64encode(file.read()).decode()}
    return {"type": "input_audio", "input_audio": {**part, **({"format": audio_format} if audio_format else {})}}


def refusal(url: str, model: str, audio_part: dict, max_tokens: int | None = None) -> tuple[int, str]:
    """The HTTP status and body of a request the server must refuse (an error, never an answer)."""
    with pytest.raises(urllib.error.HTTPError) as error:
        post_chat(url, model, audio_part, max_tokens=max_tokens)
    return error.value.code, error.value.read().decode()


def chat_completion(url: str, model: str, clip: str, audio_format: str | None, stream: bool):
    """POST an OpenAI chat completion whose user message holds the clip as base64 `input_audio` and the instruction."""
    text = post_chat(url, model, input_audio(clip, audio_format), stream=stream)
    if not stream:
        return json.loads(text)
    return [json.loads(line[len("data: ") :]) for line in text.splitlines() if line.startswith("data: ")]


def test_transformers_serve_answers_chat_completions_with_audio(answers, checkpoint, clips, tmp_path):
    """`transformers serve --trust-remote-code <checkpoint>` on 127.0.0.1: base64 WAV and FLAC parts (with and without
    a format), non-streaming and streaming, answer what our pipeline answers."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "transformers.cli.transformers", "serve", "--trust-remote-code", checkpoint]
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            command + ["--host", "127.0.0.1", "--port", str(port)],
            cwd=tmp_path,
            env=fresh_env(tmp_path),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_healthy(url, server, log_path)
        ours = answers["ours"]
        for clip, audio_format, expected in [
            (clips[0], "wav", ours[0]),
            (clips[1], "flac", ours[1]),
            (clips[2], None, ours[2]),
        ]:
            completion = chat_completion(url, checkpoint, clip, audio_format, stream=False)
            message = completion["choices"][0]["message"]
            assert message["role"] == "assistant" and message["content"].strip() == expected
            assert completion["usage"]["completion_tokens"] <= GREEDY["max_new_tokens"]

        chunks = chat_completion(url, checkpoint, clips[0], "wav", stream=True)
        deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
        assert deltas[0].get("role") == "assistant"
        streamed = "".join(delta.get("content") or "" for delta in deltas)
        assert len([delta for delta in deltas if delta.get("content")]) > 1  # token by token, not one piece
        assert streamed.strip() == ours[0]
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"  # the answer ended with EOS

        # Issue 30: a request reads only the audio it carries; its length and context are checked before work.
        secret = tmp_path / "secret.wav"
        shutil.copy(clips[0], secret)
        locations = (str(secret), str(tmp_path / "missing.wav"), "http://127.0.0.1:1/x")
        refused = [refusal(url, checkpoint, {"type": "audio_url", "audio_url": {"url": where}}) for where in locations]
        # The same refusal whether the file exists or not, or the port is closed: no file oracle, no port scan.
        assert len({(status, body.replace(where, "X")) for (status, body), where in zip(refused, locations)}) == 1
        assert refused[0][0] == 400 and "read only from the locations the operator allows" in refused[0][1]
        hours = tmp_path / "hours.wav"  # 30 KB whose header says 1 Hz: 8 h 20 min at 16 kHz
        soundfile.write(hours, np.zeros(30_000, dtype=np.float32), 1, subtype="PCM_16")
        status, body = refusal(url, checkpoint, input_audio(str(hours), "wav"))
        assert status == 400 and "beyond the processor's max_audio_seconds (3600 s)" in body
        status, body = refusal(url, checkpoint, input_audio(clips[0], "wav"), max_tokens=1000)
        assert status >= 400
        with open(log_path) as log:
            assert "lower max_new_tokens (max_tokens when served)" in body + log.read()
        completion = chat_completion(url, checkpoint, clips[0], "wav", stream=False)  # the server still answers
        assert completion["choices"][0]["message"]["content"].strip() == ours[0]
    finally:
        server.terminate()
        server.wait(timeout=30)
