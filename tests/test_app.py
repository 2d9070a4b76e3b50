"""The speech chat demo: its checkpoint matches `world/demo_manifest.json`, it streams, and it works in a browser.

The browser test starts `python app.py` from another directory, drives headless Chromium with selenium (upload a world
clip, ask for its transcription, then a follow-up question) and checks the streamed answers against the model's greedy
answers computed here.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request

import gradio as gr
import jiwer
import pytest
from transformers import pipeline

import app
from tests.helpers.launching import free_port
from world import build_demo, build_world, language

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
MAX_NEW_TOKENS = 24

pytestmark = pytest.mark.skipif(not os.path.exists(build_demo.DEMO_MANIFEST), reason="the demo checkpoint is not built")


@pytest.fixture(scope="module")
def demo_manifest() -> dict:
    with open(build_demo.DEMO_MANIFEST) as file:
        return json.load(file)


@pytest.fixture(scope="module")
def example() -> dict:
    """The first example clip the app offers, with its transcript."""
    path = app.example_clips(app.WORLD_CLIPS, 1)[0]
    with open(os.path.join(app.WORLD_CLIPS, "metadata.jsonl"), encoding="utf-8") as file:
        rows = {row["file_name"]: row for row in map(json.loads, file)}
    return {"path": path, "text": rows[os.path.basename(path)]["text"]}


@pytest.fixture(scope="module")
def speech_llm():
    return pipeline(model=app.WORLD_MODEL, trust_remote_code=True)


def test_demo_checkpoint_matches_its_manifest(demo_manifest):
    assert build_world.file_records(build_demo.DEMO_DIR) == demo_manifest["files"]
    assert demo_manifest["world_manifest_sha256"] == build_world.sha256_of_files([build_world.MANIFEST]), (
        "world/ was rebuilt after the demo checkpoint: run `python -m world.build_demo`"
    )
    with open(os.path.join(build_demo.DEMO_DIR, "processor_config.json")) as file:
        assert json.load(file)["prompt_layout"] == build_demo.LAYOUT


def test_answer_streams_token_by_token_to_the_greedy_answer(speech_llm, example):
    chat = app.SpeechChat(app.WORLD_MODEL)
    conversation = [app.user_turn(language.TRANSCRIBE_INSTRUCTION, example["path"], chat.processor.prompt_layout)]
    pieces = list(chat.stream(conversation, MAX_NEW_TOKENS, temperature=0.0))
    greedy = speech_llm(example["path"], instruction=language.TRANSCRIBE_INSTRUCTION, max_new_tokens=MAX_NEW_TOKENS)
    assert pieces[-1] == greedy["generated_text"]
    assert len(set(pieces)) >= 3  # the answer grew in several steps
    assert all(later.startswith(earlier) for earlier, later in zip(pieces, pieces[1:]))


def wait_for_server(url: str, process: subprocess.Popen, log_path: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            with open(log_path) as log:
                pytest.fail(f"app.py exited with {process.returncode}:\n{log.read()}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            time.sleep(1)
    pytest.fail(f"app.py did not serve {url} within {timeout} s")


@pytest.fixture(scope="module", autouse=True)
def app_process(tmp_path_factory):
    """`python app.py` (its defaults: the world's checkpoint and clips) started from another directory, at once, so
    that it starts up while the other tests of this module run."""
    cwd = tmp_path_factory.mktemp("app_cwd")
    port = free_port()
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "BLSP_MODEL")}
    env.update(HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    log_path = str(cwd / "app.log")
    with open(log_path, "w") as log:
        command = [sys.executable, app.__file__, "--server_port", str(port)]
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield {"url": f"http://127.0.0.1:{port}", "process": process, "log": log_path}
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def server(app_process) -> str:
    wait_for_server(app_process["url"], app_process["process"], app_process["log"])
    return app_process["url"]


@pytest.fixture(scope="module")
def browser():
    if not (BROWSER and DRIVER):
        pytest.skip("headless Chromium is needed: apt-get install chromium chromium-driver (.ci/run does)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1400"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def ask(driver, instruction: str, answers_before: int) -> str:
    """Type an instruction, press Send and return the bot's answer once the app reports it done."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    box = driver.find_element(By.CSS_SELECTOR, "#ask textarea")
    box.clear()
    box.send_keys(instruction)
    driver.find_element(By.CSS_SELECTOR, "#send").click()
    wait = WebDriverWait(driver, 120)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#conversation [data-testid=bot]")) > answers_before)
    wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#status").text.startswith("Answered"))
    return driver.find_elements(By.CSS_SELECTOR, "#conversation [data-testid=bot]")[-1].text.strip()


def test_browser_upload_transcribe_and_follow_up(server, browser, speech_llm, example, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(server)
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#speech input[type=file]"))
    browser.find_element(By.CSS_SELECTOR, "#speech input[type=file]").send_keys(example["path"])
    WebDriverWait(browser, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#speech audio"))

    transcript = ask(browser, language.TRANSCRIBE_INSTRUCTION, answers_before=0)
    greedy = speech_llm(example["path"], instruction=language.TRANSCRIBE_INSTRUCTION, max_new_tokens=64)
    assert transcript == greedy["generated_text"]
    assert jiwer.wer(example["text"], transcript) <= 0.4, (example["text"], transcript)

    follow_up = ask(browser, language.QUESTION_INSTRUCTION, answers_before=1)
    layout = speech_llm.processor.prompt_layout
    conversation = [
        app.user_turn(language.TRANSCRIBE_INSTRUCTION, example["path"], layout),
        {"role": "assistant", "content": transcript},
        app.user_turn(language.QUESTION_INSTRUCTION, None, layout),
    ]
    assert follow_up == speech_llm(conversation, max_new_tokens=64)["generated_text"]
    browser.save_screenshot(str(tmp_path / "demo.png"))
    assert os.path.getsize(tmp_path / "demo.png") > 10_000


def test_a_failed_turn_shows_its_reason_leaves_no_trace_and_later_turns_work(example, tmp_path):
    chat = app.SpeechChat(app.WORLD_MODEL)
    not_audio = tmp_path / "notes.txt"
    not_audio.write_text("not audio at all")
    failures = [
        (str(not_audio), language.TRANSCRIBE_INSTRUCTION, 8, "notes.txt'.*could not decode it as audio"),
        (example["path"], "Repeat <speech> please.", 8, "holds '<speech>', the model's speech placeholder"),
        (example["path"], language.TRANSCRIBE_INSTRUCTION, 10**6, "too long for this model: .* beyond the LLM's"),
    ]
    for audio, instruction, max_new_tokens, reason in failures:
        with pytest.raises(gr.Error) as failure:
            list(app.respond(chat, audio, instruction, max_new_tokens, 0.0, []))
        assert re.search(reason, failure.value.message), failure.value.message
    outputs = list(app.respond(chat, example["path"], language.TRANSCRIBE_INSTRUCTION, MAX_NEW_TOKENS, 0.0, []))
    assert all(state == [] for _, state, _, _ in outputs[:-1])  # the state holds the turn once it is answered
    _, conversation, _, _ = outputs[-1]
    assert [message["role"] for message in conversation] == ["user", "assistant"]
    greedy = list(chat.stream(conversation[:1], MAX_NEW_TOKENS, temperature=0.0))[-1]
    assert conversation[1]["content"] == greedy
