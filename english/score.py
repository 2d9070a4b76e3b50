"""Score English BLSP systems zero-shot on the held-out sentences of `english.build_corpus`, one table.

    python -m english.score --blsp runs/english/blsp-full --untrained [--output_dir runs/english/eval]

Systems: the trained BLSP model (speech in), the same model with an untrained adapter, the LLM reading the reference
transcript (text input, the ceiling) and the cascade (whisper-tiny.en's transcript -> the LLM). Tasks, each with one
prompt for every system (`PROMPTS`, chosen by `python -m english.prompts` on training sentences; the instruction
before the speech or text by default):
- transcribe: "Repeat the following text exactly, word for word, and write nothing else." scored by WER;
- question: the row's one-word question ("Which animal is mentioned? Answer with one word."), on the rows that carry
  one, scored by accuracy: the answer word is among the first three words of the reply;
- continue: BLSP's continuation instruction, scored by BLEU against the text-input model's continuation
  (agreement with the LLM reading the transcript; the text-input system scores 100 by definition).
No system's reply may repeat one of its own 6-token n-grams (`REPLY_NGRAM_BLOCK`: greedy decoding loops otherwise).
Every split is scored: training voices, the held-out espeak-ng and festival voices, Piper's neural voice and real
human speech (`test_real_speech`).
"""

import argparse
import json
import os
from dataclasses import dataclass

from transformers import pipeline

from blsp_steps import evaluation as scoring
from blsp_steps.corpora import CorpusArguments
from english.build_corpus import TEST_SPLITS
from english.sentences import question_category
from processing_blsp import CONTINUATION_INSTRUCTION, build_messages, load_audio
from world.run import save_untrained_blsp

ENGLISH_DIR = os.path.dirname(os.path.abspath(__file__))
SAMPLING_RATE = 16000


@dataclass(frozen=True)
class Prompt:
    """A task's prompt, the same for every system: the instruction (the question task's formats the row's question,
    `{question}`, or its category, `{category}`), the reply's `max_new_tokens`, and worked examples put before the
    row's turn as earlier chat turns (few-shot; text, for every system: (instruction, text, reply))."""

    instruction: str
    max_new_tokens: int
    examples: tuple[tuple[str, str, str], ...] = ()

    def history(self, layout: str) -> list[dict]:
        """The examples as user and assistant turns, laid out as the row's own turn is."""
        turns = []
        for instruction, text, reply in self.examples:
            turns.extend(build_messages(instruction, text, layout, None))
            turns.append({"role": "assistant", "content": reply})
        return turns


TRANSCRIBE_INSTRUCTION = "Repeat the following text exactly, word for word, and write nothing else."
SENTENCE_EXAMPLE, SPAN_EXAMPLE, LAST_SPAN_EXAMPLE, *RUN_EXAMPLES = (
    (TRANSCRIBE_INSTRUCTION, text, text)
    for text in (
        "The accent falls on the first syllable",
        "the price",
        "school picked",
        "The horse was tough to break She was found out when she tried to cash the stolen checks She detected high "
        "levels of lead in her drinking water",
        "The grandparents want to bond with the child the newcomers were met by smiling greeters the baby began to cry "
        "again",
    )
)
"""Worked examples of transcription (text for every system): the last sentence of `train`, the last two spans of
`train_short`, and two runs of three `train` sentences said as one text, as `dev_long`'s clips (sentences -9 to -7
and -4 to -2): no evaluated sentence."""
PROMPTS = {
    "transcribe": Prompt(TRANSCRIBE_INSTRUCTION, 160, (*RUN_EXAMPLES, LAST_SPAN_EXAMPLE)),
    "question": Prompt(
        "Which {category} is mentioned?",
        8,
        (("Which family member is mentioned?", "The proud father produced many pictures of his baby", "father"),),
    ),
    "continue": Prompt(CONTINUATION_INSTRUCTION, 40),
}
"""Chosen by `python -m english.prompts` on training sentences, spans and runs of sentences so that the LLM reading
the transcript is a real ceiling (the transcription examples: two runs, then a span; until 2026-12-08, a sentence and
a span). The question's example is the last `train` sentence that carries one: no evaluated sentence."""
TRANSCRIPT_TOKENS_PER_SECOND = 5
"""A transcript's room: each clip gets `blsp_steps.evaluation.BUDGET_TOKENS` plus 5 tokens a second of its own
audio (speech rarely passes 3 words a second), and the reply's first line is scored (the instruction says to write
nothing else). With one budget for the longest clip, a one-word prompt had 150 tokens to write on."""


def transcription_settings(task: str) -> dict:
    """The evaluation settings of the transcription task: a budget per clip and the reply's first line."""
    if task != "transcribe":
        return {}
    return {"max_new_tokens_per_second": TRANSCRIPT_TOKENS_PER_SECOND, "first_line": True}


REPLY_NGRAM_BLOCK = 6
"""No reply may repeat one of its own 6-token n-grams (`blsp_steps.evaluation.NoRepeatReplyNGram`), for every
system: greedy decoding looped on two long real prompts ("there for there for ..." to the budget). Chosen on the dev
splits among 3, 4 and 6 (and none): no BLSP or text-input reply changed there and the mean over the three systems
moved by 0.3 points at most, so the largest, the block least likely to stop a true repetition."""

ANSWER_WORDS = 3
"""An answer counts when the expected word is among the reply's first words ("Dog." and "The dog." both count)."""


def write_evaluation_set(data_dir: str, split: str, output_dir: str, asr, max_samples: int | None) -> str:
    """The split as jsonl (audio path, transcript, question, answer) plus whisper's transcript, written once.

    Rows without a question (real speech that names no category word) get an empty one; the question task skips
    them (`question_set`)."""
    path = os.path.join(output_dir, f"{split}.jsonl")
    if os.path.exists(path):
        return path
    with open(os.path.join(data_dir, split, "metadata.jsonl"), encoding="utf-8") as file:
        rows = evenly_spaced([json.loads(line) for line in file], max_samples)
    audio = [os.path.join(os.path.abspath(data_dir), split, row["file_name"]) for row in rows]
    clips = [{"raw": load_audio(path, SAMPLING_RATE), "sampling_rate": SAMPLING_RATE} for path in audio]
    transcripts = [output["text"].strip() for output in asr(clips, batch_size=8)]
    with open(path + ".tmp", "w", encoding="utf-8") as file:
        for row, clip, transcript in zip(rows, audio, transcripts):
            record = {key: row[key] for key in ("text", "duration")}
            record.update(question=row.get("question", ""), answer=row.get("answer", ""))
            file.write(json.dumps({**record, "audio": clip, "asr_transcript": transcript}) + "\n")
    os.replace(path + ".tmp", path)
    return path


def question_instruction(question: str, prompt: Prompt = PROMPTS["question"]) -> str:
    """`prompt`'s instruction for a row's question ("Which animal is mentioned? Answer with one word.")."""
    return prompt.instruction.format(question=question, category=question_category(question))


def evenly_spaced(rows: list[dict], count: int | None) -> list[dict]:
    """`count` rows spread evenly over the split (all when None or more), plus every row that carries a question."""
    if count is None or count >= len(rows):
        return rows
    step = len(rows) / count
    chosen = {int(index * step) for index in range(count)}
    return [row for index, row in enumerate(rows) if index in chosen or row.get("question")]


def has_questions(evaluation_set: str) -> bool:
    with open(evaluation_set, encoding="utf-8") as file:
        return any(json.loads(line)["question"] for line in file)


def question_set(evaluation_set: str) -> str:
    """The evaluation set's rows that carry a question, with the question task's `instruction`, written beside it
    (anew each time: the instruction follows `PROMPTS`)."""
    path = evaluation_set.replace(".jsonl", "-questions.jsonl")
    with open(evaluation_set, encoding="utf-8") as file:
        rows = [json.loads(line) for line in file]
    with open(path, "w", encoding="utf-8") as file:
        for row in rows:
            if row["question"]:
                file.write(json.dumps({**row, "instruction": question_instruction(row["question"])}) + "\n")
    return path


def answer_accuracy(predictions: list[dict]) -> tuple[float, float]:
    """(accuracy with the word among the first `ANSWER_WORDS`, exact-match accuracy), in percent."""
    hits = exact = 0
    for record in predictions:
        words = scoring.normalize_words(record["prediction"]).split()
        hits += record["reference"].lower() in words[:ANSWER_WORDS]
        exact += words == [record["reference"].lower()]
    return 100 * hits / len(predictions), 100 * exact / len(predictions)


def read_predictions(directory: str) -> list[dict]:
    with open(os.path.join(directory, "predictions.jsonl"), encoding="utf-8") as file:
        return [json.loads(line) for line in file]


def run_task(system: dict, evaluation_set: str, task: str, output_dir: str, args) -> list[dict]:
    """Generate one system's replies for one task on one evaluation set (kept when already there, made with the same
    system, prompt and settings; other settings are refused rather than mixed into one table)."""
    prompt, question = PROMPTS[task], task == "question"
    history = prompt.history(args.prompt_layout)
    settings = {
        "system": {
            **{key: system.get(key) for key in ("path", "input", "ctc_temperature")},
            **({"config_overrides": system["config_overrides"]} if system.get("config_overrides") else {}),
        },
        "prompt": {"instruction": prompt.instruction, "history": history},
        "layout": args.prompt_layout,
        "no_repeat_reply_ngram_size": args.no_repeat_reply_ngram_size,
    }
    settings_file = os.path.join(output_dir, "settings.json")
    if os.path.exists(os.path.join(output_dir, "metrics.json")):
        recorded = None
        if os.path.exists(settings_file):
            with open(settings_file, encoding="utf-8") as file:
                recorded = json.load(file)
        if recorded != settings:
            raise ValueError(
                f"{output_dir} holds replies made with other settings than this run's ({settings_file}): give "
                "another --output_dir, or delete that folder to score anew."
            )
        return read_predictions(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    with open(settings_file, "w", encoding="utf-8") as file:
        json.dump(settings, file, indent=1)
    history_file = None
    if history:
        history_file = os.path.join(output_dir, "history.json")
        with open(history_file, "w", encoding="utf-8") as file:
            json.dump(history, file, indent=1)
    evaluation_args = scoring.EvaluationArguments(
        model_name_or_path=system["path"],
        output_dir=output_dir,
        input=system["input"],
        task="answer" if question else task,
        instruction=None if question else prompt.instruction,
        instruction_column_name="instruction" if question else None,
        reference_column_name="answer" if question else None,
        asr_transcript_column_name="asr_transcript" if system["input"] == "cascade" else None,
        prompt_layout=args.prompt_layout,
        speech_model_name_or_path=args.asr,
        text_model_name_or_path=args.llm,
        batch_size=args.batch_size,
        max_new_tokens=prompt.max_new_tokens,
        history_file=history_file,
        ctc_temperature=system.get("ctc_temperature"),
        config_overrides=system.get("config_overrides"),
        no_repeat_reply_ngram_size=args.no_repeat_reply_ngram_size or None,
        **transcription_settings(task),
    )
    dataset = question_set(evaluation_set) if question else evaluation_set
    scoring.evaluate(CorpusArguments(dataset_name=dataset), evaluation_args)
    return read_predictions(output_dir)


def continuation_agreement(predictions: list[dict], references: list[dict]) -> float:
    """BLEU of the continuations against the text-input model's continuations of the same rows."""
    by_row = {record["row_id"]: record["prediction"] for record in references}
    return scoring.score(
        [record["prediction"] for record in predictions], [by_row[record["row_id"]] for record in predictions]
    )["bleu"]


def save_untrained(whisper: str, llm: str, output_dir: str) -> str:
    """The untrained baseline (`world.run.save_untrained_blsp`, prompts speech first), made once under `output_dir`."""
    destination = os.path.join(output_dir, "untrained")
    if not os.path.exists(os.path.join(destination, "config.json")):
        save_untrained_blsp(whisper, llm, destination, "speech_first")
    return destination


def systems_to_score(args) -> dict[str, dict]:
    """Short name -> path, input kind and the table's column title."""
    systems = {}
    if args.blsp:
        blsp = {"path": args.blsp, "input": "speech", "title": "BLSP (speech)", "ctc_temperature": args.ctc_temperature}
        blsp["config_overrides"] = args.config_overrides
        systems["blsp"] = blsp
    if args.untrained and "untrained" in args.systems:
        path = save_untrained(args.asr, args.llm, args.output_dir)
        systems["untrained"] = {"path": path, "input": "speech", "title": "untrained adapter"}
    systems["text_input"] = {"path": args.llm, "input": "text", "title": "text input (upper bound)"}
    systems["cascade"] = {"path": args.llm, "input": "cascade", "title": "cascade (whisper-tiny.en -> LLM)"}
    return {name: system for name, system in systems.items() if name in args.systems}


def task_scores(task: str, outputs: dict[str, list[dict]], text_input: list[dict] | None) -> tuple[str, list[float]]:
    """The task's metric name and each system's score (continuations against the `text_input` system's)."""
    if task == "transcribe":
        pairs = [([r["prediction"] for r in out], [r["reference"] for r in out]) for out in outputs.values()]
        return "WER", [scoring.score(predictions, references)["wer"] for predictions, references in pairs]
    if task == "question":
        return f"answer in first {ANSWER_WORDS} words, %", [answer_accuracy(out)[0] for out in outputs.values()]
    return "BLEU vs text input", [continuation_agreement(out, text_input) for out in outputs.values()]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blsp", default=None, help="The trained BLSP checkpoint.")
    parser.add_argument(
        "--untrained", action="store_true", help="Also score the same model with a freshly initialised adapter."
    )
    parser.add_argument(
        "--llm", default="converted/smollm2-135m-instruct", help="The LLM: text input, cascade, the adapters' base."
    )
    parser.add_argument(
        "--asr", default="converted/whisper-tiny.en", help="The cascade's ASR model, and the adapters' Whisper base."
    )
    parser.add_argument("--data_dir", default=os.path.join(ENGLISH_DIR, "data"))
    parser.add_argument("--output_dir", default="runs/english/eval")
    parser.add_argument("--splits", nargs="*", default=list(TEST_SPLITS))
    parser.add_argument("--tasks", nargs="*", default=["transcribe", "question", "continue"])
    parser.add_argument(
        "--systems", nargs="*", default=["blsp", "untrained", "text_input", "cascade"], help="Score only these."
    )
    parser.add_argument(
        "--max_samples",
        type=int,
        default=None,
        help="Rows per split, spread evenly over it (rows with a question are always kept).",
    )
    parser.add_argument(
        "--prompt_layout",
        default="instruction_first",
        choices=["speech_first", "instruction_first"],
        help="Where the speech (or text) goes: after the instruction (chosen by english.prompts), or before it.",
    )
    parser.add_argument(
        "--ctc_temperature",
        type=float,
        default=None,
        help="The BLSP checkpoint's ctc_temperature for this run (0: each kept frame as its best token); its own when "
        "not set.",
    )
    parser.add_argument(
        "--config_overrides",
        default=None,
        help="The BLSP checkpoint's decode-time settings for this run, e.g. 'ctc_beam_size=16,ctc_lm_weight=0.3,"
        "ctc_length_bonus=2' (chosen on dev with english.readout); its own when not set.",
    )
    parser.add_argument(
        "--no_repeat_reply_ngram_size",
        type=int,
        default=REPLY_NGRAM_BLOCK,
        help="Every system's replies may not repeat one of their own n-grams of this many tokens (greedy loops); 0 "
        f"for no block. Default {REPLY_NGRAM_BLOCK}, chosen on the dev splits.",
    )
    parser.add_argument("--batch_size", type=int, default=20)
    args = parser.parse_args()
    os.makedirs(args.output_dir, exist_ok=True)
    asr = pipeline("automatic-speech-recognition", model=args.asr)
    systems = systems_to_score(args)
    titles = [system["title"] for system in systems.values()]
    lines = ["| split | task (metric) | " + " | ".join(titles) + " |", "|" + "---|" * (len(systems) + 2)]
    for split in args.splits:
        evaluation_set = write_evaluation_set(args.data_dir, split, args.output_dir, asr, args.max_samples)
        for task in args.tasks:
            if task == "question" and not has_questions(evaluation_set):
                print(f"{split}: no row carries a question; the question task is skipped.", flush=True)
                continue
            outputs = {
                name: run_task(system, evaluation_set, task, os.path.join(args.output_dir, split, task, name), args)
                for name, system in systems.items()
            }
            text_input = None
            if task == "continue":
                reference = {"path": args.llm, "input": "text"}
                text_input = run_task(
                    reference, evaluation_set, task, os.path.join(args.output_dir, split, task, "text_input"), args
                )
            metric, cells = task_scores(task, outputs, text_input)
            lines.append(f"| {split} | {task} ({metric}) | " + " | ".join(f"{cell:.1f}" for cell in cells) + " |")
            print(lines[-1], flush=True)
    table = "\n".join(lines)
    with open(os.path.join(args.output_dir, "results.md"), "w", encoding="utf-8") as file:
        file.write(table + "\n")
    print(table)


if __name__ == "__main__":
    main()
