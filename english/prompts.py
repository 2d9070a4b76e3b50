"""Choose each task's prompt so that the LLM reading the reference transcript is a real ceiling, on training
sentences only (no held-out split is read): candidate instructions, layouts and worked examples (few-shot chat turns),
scored with text input.

    python -m english.prompts [--llm converted/smollm2-135m-instruct] [--num_sentences 100]

Transcription candidates are scored by WER against the text, on training sentences and on spans of 1-4 words
(`train_short`), each with `english.score`'s budget per clip and first line; question candidates by the share of
replies that hold the answer word among their first words (`english.score.answer_accuracy`), on the first training
sentences that carry a category question (`english.sentences.question_fields`). The prompts `english.score` uses
(`PROMPTS` there) are the best rows of this table for SmolLM2-135M-Instruct; the table is in `english/README.md`.
"""

import argparse
import json
import os
import tempfile

from blsp_steps.evaluation import EvaluationArguments, Generator, first_line, row_budget, score
from english.score import (
    ANSWER_WORDS,
    PROMPTS,
    TRANSCRIBE_INSTRUCTION,
    Prompt,
    answer_accuracy,
    question_instruction,
    transcription_settings,
)
from english.sentences import question_fields

ENGLISH_DIR = os.path.dirname(os.path.abspath(__file__))
FULL_EXAMPLE = ("Which family member is mentioned? Answer with one word.",) + PROMPTS["question"].examples[0][1:]
CANDIDATES = [
    ("transcribe", Prompt("Repeat the following text.", 160), "speech_first"),
    ("transcribe", Prompt("Repeat the following text.", 160), "instruction_first"),
    ("transcribe", Prompt("Please transcribe the following audio.", 160), "instruction_first"),
    ("transcribe", Prompt(TRANSCRIBE_INSTRUCTION, 160), "instruction_first"),
    ("transcribe", Prompt(TRANSCRIBE_INSTRUCTION, 160, PROMPTS["transcribe"].examples[:1]), "instruction_first"),
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


def training_rows(data_dir: str, count: int) -> tuple[list[dict], list[dict], list[dict]]:
    """The first `count` sentences of `train`, the first `count` of them with a question, and the first `count`
    spans of `train_short` (none when it was not built)."""
    with open(os.path.join(data_dir, "train", "metadata.jsonl"), encoding="utf-8") as file:
        rows = [json.loads(line) for line in file]
    questions = [{**row, **fields} for row in rows if (fields := question_fields(row["text"]))]
    short = os.path.join(data_dir, "train_short", "metadata.jsonl")
    spans = []
    if os.path.exists(short):
        with open(short, encoding="utf-8") as file:
            spans = [json.loads(line) for line in file][:count]
    return rows[:count], questions[:count], spans


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
    parser.add_argument("--candidates", nargs="*", type=int, default=None, help="Score only these rows (0-based).")
    args = parser.parse_args()
    sentences, questions, spans = training_rows(args.data_dir, args.num_sentences)
    lines = [
        "| task | instruction | examples | layout | sentences | spans (train_short) |",
        "|---|---|---|---|---|---|",
    ]
    chosen = [CANDIDATES[index] for index in args.candidates] if args.candidates is not None else CANDIDATES
    for task, prompt, layout in chosen:
        if task == "transcribe":
            results = []
            for rows in (sentences, spans):
                replies = (
                    generate(args.llm, layout, task, prompt, [prompt.instruction] * len(rows), rows) if rows else []
                )
                results.append(f"WER {score(replies, [row['text'] for row in rows])['wer']:.1f}" if rows else "")
        else:
            instructions = [question_instruction(row["question"], prompt) for row in questions]
            replies = generate(args.llm, layout, task, prompt, instructions, questions)
            records = [{"prediction": reply, "reference": row["answer"]} for reply, row in zip(replies, questions)]
            results = [f"answer in first {ANSWER_WORDS} words {answer_accuracy(records)[0]:.1f}%", ""]
        examples = len(prompt.examples)
        lines.append(f"| {task} | {prompt.instruction} | {examples} | {layout} | {results[0]} | {results[1]} |")
        print(lines[-1], flush=True)
    print(f"{len(sentences)} sentences, {len(questions)} questions, {len(spans)} spans\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
