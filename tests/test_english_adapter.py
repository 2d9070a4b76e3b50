"""The shipped English adapter (english/models/): adapter-only, on the real whisper-tiny.en and SmolLM2-135M-Instruct.

Loaded in a fresh process, from another directory, with the project not importable, through `AutoModel`,
`AutoProcessor` and `pipeline`, its bases pointed at the converted checkpoints (`tests/helpers/real_weights.py`), it
gives the greedy answers recorded when it was shipped (`examples/answers.json`) on held-out clips (real human speech,
Piper's neural voice, the held-out espeak-ng and festival voices), and after the worked examples it transcribes the
12 shipped clips under 100% WER and better than with the instruction alone. The bound: it scored 46.9% on them when
shipped (66.3% with the instruction alone; its config reads the speech by a CTC beam that SmolLM2 rescores), where an
empty answer scores 100% and an untrained adapter far more (it hears nothing, and SmolLM2 writes on); what the bound
proves is that the speech reaches the LLM, the recorded answers prove the exact load. Its card's code runs as
written, offline.
"""

import json
import os
import subprocess
import sys

import pytest

from blsp_steps.evaluation import first_line, score
from english.score import PROMPTS
from tests.helpers.launching import user_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADAPTER_DIR = os.path.join(ROOT, "english", "models", "blsp-whisper-tiny.en-smollm2-135m")
EXAMPLES = os.path.join(ADAPTER_DIR, "examples")
TRANSCRIBE = """
import json, sys
import soundfile
from transformers import AutoModel, AutoProcessor, pipeline
path, whisper, llm, instruction, max_new_tokens, history = sys.argv[1:7]
max_new_tokens, history = int(max_new_tokens), json.loads(history)
bases = {"speech_model_name_or_path": whisper, "text_model_name_or_path": llm}
model = AutoModel.from_pretrained(path, trust_remote_code=True, **bases)
processor = AutoProcessor.from_pretrained(path, trust_remote_code=True)
with open(f"{path}/examples/metadata.jsonl") as file:
    every_row = [json.loads(line) for line in file]
rows = every_row[::3]  # every third: Piper, Piper, held-out espeak-ng, held-out festival
clips = [soundfile.read(f"{path}/examples/{row['file_name']}", dtype="float32")[0] for row in rows]
speech_llm = pipeline(model=path, trust_remote_code=True, model_kwargs=bases)
answers = speech_llm(clips, instruction=instruction, max_new_tokens=max_new_tokens, batch_size=4)
first = processor(text=processor.render_prompt(instruction), audio=clips[0])
tokens = model.generate(**first, do_sample=False, max_new_tokens=max_new_tokens)[0, first["input_ids"].shape[1]:]
instruction_first = AutoProcessor.from_pretrained(path, trust_remote_code=True, prompt_layout="instruction_first")
speech_llm = pipeline(model=path, processor=instruction_first, trust_remote_code=True, model_kwargs=bases)
transcripts = speech_llm(
    [f"{path}/examples/{row['file_name']}" for row in every_row],
    instruction=instruction, max_new_tokens=max_new_tokens, batch_size=4,
)
conversations = [
    history + [{"role": "user", "content": [
        {"type": "text", "text": instruction}, {"type": "audio", "path": f"{path}/examples/{row['file_name']}"}
    ]}]
    for row in every_row
]
few_shot = speech_llm(conversations, max_new_tokens=max_new_tokens, batch_size=4)
print(json.dumps({
    "model": type(model).__name__,
    "adapter_only": model.config.adapter_only,
    "files": [row["file_name"] for row in rows],
    "answers": [answer["generated_text"] for answer in answers],
    "first_generate": processor.decode(tokens, skip_special_tokens=True).strip(),
    "instruction_first": {row["file_name"]: out["generated_text"] for row, out in zip(every_row, transcripts)},
    "few_shot": {row["file_name"]: out["generated_text"] for row, out in zip(every_row, few_shot)},
    "references": [row["text"] for row in every_row],
}))
"""


@pytest.fixture(scope="module")
def recorded() -> dict:
    with open(os.path.join(EXAMPLES, "answers.json")) as file:
        return json.load(file)


@pytest.fixture(scope="module")
def shipped_answers(real_whisper, real_llm, recorded, tmp_path_factory) -> dict:
    if not os.path.isdir(ADAPTER_DIR):
        pytest.fail(f"{ADAPTER_DIR} is missing: python -m english.ship makes it (english/README.md).")
    workdir = tmp_path_factory.mktemp("elsewhere")
    env = user_env()
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(workdir / "hf_home"))
    completed = subprocess.run(
        [
            *(sys.executable, "-c", TRANSCRIBE, ADAPTER_DIR, real_whisper, real_llm),
            *(recorded["instruction"], str(recorded["max_new_tokens"])),
            json.dumps(PROMPTS["transcribe"].history("instruction_first")),
        ],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


def test_shipped_adapter_is_small_and_names_its_hub_bases():
    with open(os.path.join(ADAPTER_DIR, "config.json")) as file:
        config = json.load(file)
    assert config["adapter_only"] is True
    assert config["speech_model_name_or_path"] == "openai/whisper-tiny.en"
    assert config["text_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    size = sum(os.path.getsize(os.path.join(root, name)) for root, _, names in os.walk(ADAPTER_DIR) for name in names)
    assert size < 30e6


def test_shipped_adapter_gives_its_recorded_answers_in_a_fresh_process(shipped_answers, recorded):
    assert shipped_answers["model"] == "BlspForConditionalGeneration" and shipped_answers["adapter_only"]
    assert len(shipped_answers["files"]) == 4
    expected = [recorded["answers"][name] for name in shipped_answers["files"]]
    assert shipped_answers["answers"] == expected
    assert shipped_answers["first_generate"] == expected[0]


def test_shipped_adapter_gives_its_recorded_instruction_first_answers(shipped_answers, recorded):
    assert shipped_answers["instruction_first"] == recorded["instruction_first"]
    predictions = list(shipped_answers["instruction_first"].values())
    wer = score(predictions, shipped_answers["references"])["wer"]
    assert wer == pytest.approx(recorded["instruction_first_wer"], abs=0.05)


def test_shipped_adapter_transcribes_held_out_clips_under_the_bound_after_worked_examples(shipped_answers, recorded):
    """After english.score's worked examples (text chat turns), as its card shows: the recorded answers, a WER
    under 100% on the 12 held-out clips (real speech among them), and under the instruction alone's."""
    assert shipped_answers["few_shot"] == recorded["few_shot"]
    predictions = [first_line(answer) for answer in shipped_answers["few_shot"].values()]
    wer = score(predictions, shipped_answers["references"])["wer"]
    assert wer == pytest.approx(recorded["few_shot_wer"], abs=0.05)
    assert wer < 100 and wer < recorded["instruction_first_wer"]


def test_app_serves_the_shipped_adapter_on_local_bases(real_whisper, real_llm, recorded):
    import app

    chat = app.SpeechChat(ADAPTER_DIR, speech_model_name_or_path=real_whisper, text_model_name_or_path=real_llm)
    with open(os.path.join(EXAMPLES, "metadata.jsonl")) as file:
        first = json.loads(file.readline())["file_name"]
    turn = app.user_turn(recorded["instruction"], os.path.join(EXAMPLES, first), chat.processor.prompt_layout)
    *_, answer = chat.stream([turn], recorded["max_new_tokens"], temperature=0.0)
    assert answer == recorded["answers"][first]


def test_the_cards_code_runs_as_written_offline(real_whisper, real_llm, recorded, tmp_path):
    """The model card's Python block, run in a fresh process offline, from a folder where `converted/` holds the
    bases (as the English recipe converts them) and `english/models/` the adapter, with the project not importable:
    its few-shot answer is the one recorded after english.score's worked examples."""
    with open(os.path.join(ADAPTER_DIR, "README.md"), encoding="utf-8") as file:
        card = file.read()
    code = card.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "converted").mkdir()
    os.symlink(real_whisper, tmp_path / "converted" / "whisper-tiny.en")
    os.symlink(real_llm, tmp_path / "converted" / "smollm2-135m-instruct")
    (tmp_path / "english" / "models").mkdir(parents=True)
    os.symlink(ADAPTER_DIR, tmp_path / "english" / "models" / os.path.basename(ADAPTER_DIR))
    env = user_env()
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf_home"))
    completed = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "generated_text" in completed.stdout
    clip = code.split('clip = f"{path}/examples/', 1)[1].split('"', 1)[0]
    assert completed.stdout.strip().splitlines()[-1] == first_line(recorded["few_shot"][clip])
