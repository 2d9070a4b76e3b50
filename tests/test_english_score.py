"""The English scoring's choices (`english.score`): which rows of a split are scored, and how long each transcript may
grow; every system gets the same."""

import argparse
import json
import os

import pytest

from blsp_steps.evaluation import EvaluationArguments, row_budget
from english import score
from english.score import (
    PROMPTS,
    RUN_EXAMPLES,
    TRANSCRIBE_INSTRUCTION,
    evenly_spaced,
    question_instruction,
    run_task,
    transcription_settings,
)


def test_a_subset_spreads_over_the_split_and_keeps_every_question():
    rows = [{"text": f"row {index}"} for index in range(20)]
    for index in (1, 2, 3):
        rows[index]["question"] = "Which number is mentioned?"
    chosen = [int(row["text"].split()[1]) for row in evenly_spaced(rows, 5)]
    assert chosen == [0, 1, 2, 3, 4, 8, 12, 16]  # every 4th row, and the three with a question, in order
    assert evenly_spaced(rows, None) == rows and evenly_spaced(rows, 50) == rows


def test_each_transcript_gets_room_for_its_own_clip_and_no_more_than_160_tokens():
    settings = transcription_settings("transcribe")
    args = EvaluationArguments("model", "out", max_new_tokens=PROMPTS["transcribe"].max_new_tokens, **settings)
    assert [row_budget(duration, args) for duration in (0.6, 2.0, 6.0, 28.0, 60.0)] == [11, 18, 38, 148, 160]
    assert args.first_line and transcription_settings("question") == {}
    assert set(PROMPTS) == {"transcribe", "question", "continue"}


def test_questions_ask_for_the_rows_category_after_a_worked_example():
    question = "Which day of the week is mentioned? Answer with one word."
    assert question_instruction(question) == "Which day of the week is mentioned?"
    history = PROMPTS["question"].history("instruction_first")
    assert [turn["role"] for turn in history] == ["user", "assistant"]
    assert history[0]["content"].startswith("Which family member is mentioned? The proud father")
    assert history[1]["content"] == "father"
    transcripts = PROMPTS["transcribe"].history("speech_first")
    assert transcripts[0]["content"] == RUN_EXAMPLES[0][1] + " " + TRANSCRIBE_INSTRUCTION
    assert RUN_EXAMPLES[0][1].startswith("The horse was tough to break She was found out")
    # runs of sentences first, a short span last (spans are not continued): english.prompts chose them
    assert [turn["content"] for turn in transcripts[1::2]] == [RUN_EXAMPLES[0][1], RUN_EXAMPLES[1][1], "school picked"]


def test_replies_are_reused_only_when_made_with_the_same_settings(tmp_path):
    """A second run into the same --output_dir reads the replies already there only if they were made with this run's
    system, prompt and settings (a BLSP system at another ctc_temperature is refused, not mixed into the table)."""
    args = argparse.Namespace(prompt_layout="instruction_first", no_repeat_reply_ngram_size=4)
    system = {"path": "runs/blsp", "input": "speech", "ctc_temperature": 0.0}
    output_dir = str(tmp_path / "dev" / "transcribe" / "blsp")
    os.makedirs(output_dir)
    with open(os.path.join(output_dir, "metrics.json"), "w", encoding="utf-8") as file:
        json.dump({"wer": 10.0}, file)
    with pytest.raises(ValueError, match="holds replies made with other settings"):
        run_task(system, "unused.jsonl", "transcribe", output_dir, args)  # replies of unknown settings
    row = {"row_id": 0, "reference": "the red door", "prediction": "the red door"}
    with open(os.path.join(output_dir, "predictions.jsonl"), "w", encoding="utf-8") as file:
        file.write(json.dumps(row) + "\n")
    prompt = PROMPTS["transcribe"]
    settings = {
        "system": system,
        "prompt": {"instruction": prompt.instruction, "history": prompt.history("instruction_first")},
        "layout": "instruction_first",
        "no_repeat_reply_ngram_size": 4,
    }
    with open(os.path.join(output_dir, "settings.json"), "w", encoding="utf-8") as file:
        json.dump(settings, file)
    assert run_task(system, "unused.jsonl", "transcribe", output_dir, args) == [row]
    with pytest.raises(ValueError, match="give another --output_dir"):
        run_task({**system, "ctc_temperature": 1.0}, "unused.jsonl", "transcribe", output_dir, args)
    with pytest.raises(ValueError, match="give another --output_dir"):  # replies decoded with another n-gram block
        run_task(
            system,
            "unused.jsonl",
            "transcribe",
            output_dir,
            argparse.Namespace(**{**vars(args), "no_repeat_reply_ngram_size": None}),
        )


def test_a_split_without_questions_skips_the_question_task(tmp_path, monkeypatch, capsys):
    """`--tasks question` on a split whose rows carry no question (dev_short) is skipped with a note, not a crash."""
    split = tmp_path / "data" / "dev_short"
    split.mkdir(parents=True)
    (split / "metadata.jsonl").write_text(json.dumps({"file_name": "a.flac", "text": "the price", "duration": 1.0}))
    monkeypatch.setattr(score, "load_audio", lambda path, rate: [0.0])
    monkeypatch.setattr(score, "pipeline", lambda *args, **kwargs: lambda clips, batch_size: [{"text": "the price"}])
    ran = []

    def fake_run_task(system, evaluation_set, task, output_dir, args):
        ran.append((task, args.no_repeat_reply_ngram_size))
        return [{"row_id": 0, "reference": "the price", "prediction": "the price"}]

    monkeypatch.setattr(score, "run_task", fake_run_task)
    argv = ["score", "--data_dir", str(tmp_path / "data"), "--splits", "dev_short", "--systems", "text_input"]
    monkeypatch.setattr("sys.argv", argv + ["--tasks", "transcribe", "question", "--output_dir", str(tmp_path / "out")])
    score.main()
    assert ran == [("transcribe", score.REPLY_NGRAM_BLOCK)]  # every system's replies may not loop, by default
    assert "dev_short: no row carries a question" in capsys.readouterr().out
