"""Choose each task's prompt so that the LLM reading the reference transcript is a real ceiling, on training
sentences only (no held-out split is read): candidate instructions, layouts and worked examples (few-shot chat turns),
scored with text input.

    python -m english.prompts [--llm converted/smollm2-135m-instruct] [--num_sentences 100]

Transcription candidates are scored by WER against the text, on training sentences and on spans of 1-4 words
(`train_short`) and on runs of 4-6 training sentences said as one text (`english.derived.long_runs`, as `dev_long`'s
clips), each with `english.score`'s budget per clip and first line; question candidates by the share of
replies that hold the answer word among their first words (`english.score.answer_accuracy`), on the first training
sentences that carry a category question (`english.sentences.question_fields`). The prompts `english.score` uses
(`PROMPTS` there) are the best rows of this table for SmolLM2-135M-Instruct; the table is in `english/README.md`.
"""

import argparse
import json
import os
import tempfile

from blsp_steps.evaluation import EvaluationArguments, Generator, first_line, row_budget, score
from english.derived import long_row, long_runs
from english.score import (
    ANSWER_WORDS,
    PROMPTS,
    RUN_EXAMPLES,
    SENTENCE_EXAMPLE,
    SPAN_EXAMPLE,
    TRANSCRIBE_INSTRUCTION,
    Prompt,
    answer_accuracy,
    question_instruction,
    transcription_settings,
)
from english.sentences import question_fields

ENGLISH_DIR = os.path.dirname(os.path.abspath(__file__))
THIRD_RUN_TEXT = (
    "the headings and the items listed thereunder The ambassador was recalled to his country your assumption that I "
    "would agree was unwarranted"
)
THIRD_RUN = (TRANSCRIBE_INSTRUCTION, THIRD_RUN_TEXT, THIRD_RUN_TEXT)
"""A third run of three `train` sentences (-14 to -12), for a candidate only."""


def transcription(*examples: tuple[str, str, str]) -> tuple[str, Prompt, str]:
    """A transcription candidate: the word-for-word instruction first, after these worked examples."""
    return "transcribe", Prompt(TRANSCRIBE_INSTRUCTION, 160, examples), "instruction_first"


FULL_EXAMPLE = ("Which family member is mentioned? Answer with one word.",) + PROMPTS["question"].examples[0][1:]
CANDIDATES = [
    ("transcribe", Prompt("Repeat the following text.", 160), "speech_first"),
    ("transcribe", Prompt("Repeat the following text.", 160), "instruction_first"),
    ("transcribe", Prompt("Please transcribe the following audio.", 160), "instruction_first"),
    transcription(),
    transcription(SENTENCE_EXAMPLE),
    transcription(SENTENCE_EXAMPLE, SPAN_EXAMPLE),
    transcription(*RUN_EXAMPLES),
    transcription(*RUN_EXAMPLES, SPAN_EXAMPLE),
    transcription(SPAN_EXAMPLE, *RUN_EXAMPLES),
    transcription(RUN_EXAMPLES[0], SPAN_EXAMPLE, RUN_EXAMPLES[1]),
    transcription(*RUN_EXAMPLES, SENTENCE_EXAMPLE, SPAN_EXAMPLE),
    transcription(SENTENCE_EXAMPLE, *RUN_EXAMPLES, SPAN_EXAMPLE),
    transcription(THIRD_RUN, *RUN_EXAMPLES, SPAN_EXAMPLE),
    transcription(SPAN_EXAMPLE, *RUN_EXAMPLES, SPAN_EXAMPLE),
    ("transcribe", PROMPTS["transcribe"], "instruction_first"),
    ("question", Prompt("{question}", 8), "speech_first"),
    ("question", Prompt("{question}", 8), "instruction_first"),
    ("question", Prompt("Answer the question about the following text. {question}", 8), "instruction_first"),
    ("question", Prompt("{question} Reply with the word from the text only.", 8), "instruction_first"),
    ("question", Prompt("{question}", 8, (FULL_EXAMPLE,)), "instruction_first"),
    ("question", Prompt("Which {category} is mentioned?", 8), "instruction_first"),
    ("question", PROMPTS["question"], "instruction_first"),
]
"""(task, prompt, layout): the layout says where the text (at evaluation: the speech) goes; a prompt's examples are
earlier chat turns (few-shot)."""


def training_rows(data_dir: str, count: int, num_runs: int) -> tuple[list[dict], list[dict], list[dict], list[dict]]:
    """The first `count` sentences of `train`, the first `count` of them with a question, the first `count` spans of
    `train_short` (none when it was not built), and `num_runs` runs of the sentences after the first `count` (the
    text and duration of a `dev_long` clip made of them)."""
    with open(os.path.join(data_dir, "train", "metadata.jsonl"), encoding="utf-8") as file:
        rows = [json.loads(line) for line in file]
    questions = [{**row, **fields} for row in rows if (fields := question_fields(row["text"]))]
    short = os.path.join(data_dir, "train_short", "metadata.jsonl")
    spans = []
    if os.path.exists(short):
        with open(short, encoding="utf-8") as file:
            spans = [json.loads(line) for line in file][:count]
    runs = [long_row(run) for run in long_runs(rows[count:])[:num_runs]]
    return rows[:count], questions[:count], spans, runs


def generate(llm: str, layout: str, task: str, prompt: Prompt, instructions: list[str], rows: list[dict]) -> list[str]:
    """The LLM's replies reading the rows' texts, with the settings `english.score` gives the task."""
    with tempfile.TemporaryDirectory() as directory:
        history_file = None
        if prompt.examples:
            history_file = os.path.join(directory, "history.json")
            with open(history_file, "w", encoding="utf-8") as file:
                json.dump(prompt.history(layout), file)
        args = EvaluationArguments(
            model_name_or_path=llm,
            output_dir="unused",
            input="text",
            prompt_layout=layout,
            max_new_tokens=prompt.max_new_tokens,
            history_file=history_file,
            **transcription_settings(task),
        )
        generator = Generator(args)
    budgets = None
    if args.max_new_tokens_per_second is not None:
        budgets = [row_budget(row["duration"], args) for row in rows]
    replies = []
    for start in range(0, len(rows), 20):
        texts = [row["text"] for row in rows[start : start + 20]]
        replies += generator.generate(instructions[start : start + 20], texts, budgets and budgets[start : start + 20])
    return [first_line(reply) for reply in replies] if args.first_line else replies


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm", default="converted/smollm2-135m-instruct")
    parser.add_argument("--data_dir", default=os.path.join(ENGLISH_DIR, "data"))
    parser.add_argument("--num_sentences", type=int, default=100)
    parser.add_argument("--num_runs", type=int, default=40, help="Runs of 4-6 sentences (after the first ones).")
    parser.add_argument("--candidates", nargs="*", type=int, default=None, help="Score only these rows (0-based).")
    args = parser.parse_args()
    sentences, questions, spans, runs = training_rows(args.data_dir, args.num_sentences, args.num_runs)
    lines = [
        "| task | instruction | examples | layout | sentences | spans (train_short) | runs of 4-6 sentences |",
        "|---|---|---|---|---|---|---|",
    ]
    chosen = [CANDIDATES[index] for index in args.candidates] if args.candidates is not None else CANDIDATES
    for task, prompt, layout in chosen:
        if task == "transcribe":
            results = []
            for rows in (sentences, spans, runs):
                replies = (
                    generate(args.llm, layout, task, prompt, [prompt.instruction] * len(rows), rows) if rows else []
                )
                results.append(f"WER {score(replies, [row['text'] for row in rows])['wer']:.1f}" if rows else "")
        else:
            instructions = [question_instruction(row["question"], prompt) for row in questions]
            replies = generate(args.llm, layout, task, prompt, instructions, questions)
            records = [{"prediction": reply, "reference": row["answer"]} for reply, row in zip(replies, questions)]
            results = [f"answer in first {ANSWER_WORDS} words {answer_accuracy(records)[0]:.1f}%", "", ""]
        examples = len(prompt.examples)
        lines.append(f"| {task} | {prompt.instruction} | {examples} | {layout} | " + " | ".join(results) + " |")
        print(lines[-1], flush=True)
    counts = f"{len(sentences)} sentences, {len(questions)} questions, {len(spans)} spans, {len(runs)} runs"
    print(counts + "\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
