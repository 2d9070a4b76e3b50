"""Choose each task's prompt so that the LLM reading the reference transcript is a real ceiling, on training
sentences only (no held-out split is read): candidate instructions and layouts, scored with text input.

    python -m english.prompts [--llm converted/smollm2-135m-instruct] [--num_sentences 40]

Transcription candidates are scored by WER against the sentence; question candidates by the share of replies that
hold the answer word among their first words (`english.score.answer_accuracy`), on the first training sentences that
carry a category question (`english.build_corpus.question_fields`). The prompts `english.score` uses (`PROMPTS` there)
are the best rows of this table for SmolLM2-135M-Instruct; the table is in `english/README.md`.
"""

import argparse
import json
import os

from blsp_steps.evaluation import EvaluationArguments, Generator, first_line, row_budget, score
from english.build_corpus import question_fields
from english.score import ANSWER_WORDS, PROMPTS, answer_accuracy, transcription_settings

ENGLISH_DIR = os.path.dirname(os.path.abspath(__file__))
CANDIDATES = [
    ("transcribe", "Repeat the following text.", "speech_first"),
    ("transcribe", "Repeat the following text.", "instruction_first"),
    ("transcribe", "Please transcribe the following audio.", "instruction_first"),
    ("transcribe", "Repeat the following text exactly, word for word, and write nothing else.", "instruction_first"),
    ("question", "{question}", "speech_first"),
    ("question", "{question}", "instruction_first"),
    ("question", "Answer the question about the following text. {question}", "instruction_first"),
    ("question", "{question} Reply with the word from the text only.", "instruction_first"),
    (
        "question",
        'Example: in "we painted the red door", which colour is mentioned? red. Now the text. {question}',
        "instruction_first",
    ),
]
"""(task, instruction, layout): the layout says where the text (at evaluation: the speech) goes."""


def training_rows(data_dir: str, count: int) -> tuple[list[dict], list[dict]]:
    """The first `count` sentences of `train`, and the first `count` of them with a question."""
    with open(os.path.join(data_dir, "train", "metadata.jsonl"), encoding="utf-8") as file:
        rows = [json.loads(line) for line in file]
    questions = [{**row, **fields} for row in rows if (fields := question_fields(row["text"]))]
    return rows[:count], questions[:count]


def generate(llm: str, layout: str, task: str, instructions: list[str], rows: list[dict]) -> list[str]:
    """The LLM's replies reading the rows' texts, with the settings `english.score` gives the task."""
    settings = transcription_settings(task)
    args = EvaluationArguments(
        model_name_or_path=llm,
        output_dir="unused",
        input="text",
        prompt_layout=layout,
        max_new_tokens=PROMPTS[task][1],
        **settings,
    )
    generator = Generator(args)
    budgets = [row_budget(row["duration"], args) for row in rows] if settings else None
    replies = []
    for start in range(0, len(rows), 20):
        texts = [row["text"] for row in rows[start : start + 20]]
        replies += generator.generate(instructions[start : start + 20], texts, budgets and budgets[start : start + 20])
    return [first_line(reply) for reply in replies] if args.first_line else replies


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--llm", default="converted/smollm2-135m-instruct")
    parser.add_argument("--data_dir", default=os.path.join(ENGLISH_DIR, "data"))
    parser.add_argument("--num_sentences", type=int, default=40)
    parser.add_argument("--candidates", nargs="*", type=int, default=None, help="Score only these rows (0-based).")
    args = parser.parse_args()
    sentences, questions = training_rows(args.data_dir, args.num_sentences)
    lines = ["| task | instruction | layout | text input (training sentences) |", "|---|---|---|---|"]
    chosen = [CANDIDATES[index] for index in args.candidates] if args.candidates is not None else CANDIDATES
    for task, instruction, layout in chosen:
        rows = sentences if task == "transcribe" else questions
        if task == "transcribe":
            replies = generate(args.llm, layout, task, [instruction] * len(rows), rows)
            result = f"WER {score(replies, [row['text'] for row in rows])['wer']:.1f}"
        else:
            instructions = [instruction.format(question=row["question"]) for row in rows]
            replies = generate(args.llm, layout, task, instructions, rows)
            records = [{"prediction": reply, "reference": row["answer"]} for reply, row in zip(replies, rows)]
            result = f"answer in first {ANSWER_WORDS} words {answer_accuracy(records)[0]:.1f}%"
        lines.append(f"| {task} | {instruction} | {layout} | {result} |")
        print(lines[-1], flush=True)
    print(f"{len(sentences)} sentences, {len(questions)} questions\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
