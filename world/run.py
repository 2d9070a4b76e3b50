"""The whole BLSP method on the miniature world, end to end, offline, on a CPU.

    python -m world.run [--output_dir runs/world] [--ablation] [--max_steps 3000] [--threads 2]

Step 1 (`generate_continuations.py`) has the world's LLM continue every training transcript; step 2
(`train_adapter.py`) trains an adapter on the continuation task only: by default BLSP's best recipe here (speech
before the instruction, KL objective), with `--ablation` all four of both prompt layouts x both objectives.
`evaluate_blsp.py` then scores every system on the held-out sentences, in seen voices, in the held-out espeak-ng voice
and in the held-out festival voice, on all four tasks (continue, transcribe, translate, answer), and one
table is printed and written to `output_dir/results.md`. The run ends by loading the best checkpoint with
`pipeline(..., trust_remote_code=True)` and answering one spoken question.
"""

import argparse
import json
import os
import time

import torch
import yaml
from transformers import pipeline

import generate_continuations
import train_adapter
from blsp_steps import evaluation as scoring
from blsp_steps.corpora import CorpusArguments
from modeling_blsp import BlspForConditionalGeneration
from processing_blsp import BlspProcessor
from world import language
from world.build_speech import TEST_SPLITS
from world.cascade import LLM_DIR, SPEECH_MODEL_DIR, transcribe

WORLD_DIR = os.path.dirname(os.path.abspath(__file__))
REPOSITORY = os.path.dirname(WORLD_DIR)
STEP1_RECIPE = os.path.join(REPOSITORY, "configs", "world_continuations.yaml")
STEP2_RECIPE = os.path.join(REPOSITORY, "configs", "world_adapter.yaml")
PATH_SETTINGS = ("dataset_name", "llm_name_or_path", "speech_encoder_name_or_path")
SPEECH_DIR = os.path.join(WORLD_DIR, "data", "speech")
LAYOUTS = ("instruction_first", "speech_first")
LOSSES = ("ce", "kl")
RECIPE = ("speech_first", "kl")
"""The (prompt layout, objective) that the main command trains; `--ablation` trains every pair."""


def read_recipe(path: str) -> dict:
    """A recipe file's settings, its paths made absolute (they are written relative to the repository)."""
    with open(path, encoding="utf-8") as file:
        settings = yaml.safe_load(file)
    return {key: os.path.join(REPOSITORY, value) if key in PATH_SETTINGS else value for key, value in settings.items()}


def as_flags(settings: dict) -> list[str]:
    return [item for key, value in settings.items() for item in (f"--{key}", str(value))]


_STEP2 = read_recipe(STEP2_RECIPE)
TRAINING = {
    "max_steps": _STEP2["max_steps"],
    "batch_size": _STEP2["per_device_train_batch_size"],
    "learning_rate": _STEP2["learning_rate"],
}
"""Step 2's default settings (from its recipe file), which `--max_steps`, `--batch_size` and `--learning_rate` set."""
TASK_METRICS = {"continue": "exact_match", "transcribe": "wer", "translate": "bleu", "answer": "exact_match"}


def read_metadata(split: str) -> list[dict]:
    with open(os.path.join(SPEECH_DIR, split, "metadata.jsonl"), encoding="utf-8") as file:
        return [json.loads(line) for line in file]


def write_evaluation_set(split: str, output_dir: str, max_samples: int | None) -> str:
    """A jsonl file of the split: audio path, transcript, the reference of every task and the cascade's transcript."""
    rows = read_metadata(split)[:max_samples]
    paths = [os.path.join(SPEECH_DIR, split, row["file_name"]) for row in rows]
    asr_transcripts = transcribe(paths)
    path = os.path.join(output_dir, f"{split}.jsonl")
    with open(path, "w", encoding="utf-8") as file:
        for row, audio, asr in zip(rows, paths, asr_transcripts):
            sentence = language.parse(row["text"])
            references = {task: language.response(task, sentence) for task in language.INSTRUCTIONS}
            record = {"audio": audio, "text": row["text"], "asr_transcript": asr, **references}
            file.write(json.dumps(record) + "\n")
    return path


def generate_step1(output_dir: str, layout: str, max_samples: int | None) -> str:
    """Continuations of the training transcripts by the world's LLM, prompted in `layout`."""
    destination = os.path.join(output_dir, f"continuations-{layout}")
    settings = {**read_recipe(STEP1_RECIPE), "output_dir": destination, "prompt_layout": layout}
    if max_samples:
        settings["max_samples"] = max_samples
    flags = as_flags(settings)
    generate_continuations.main(flags)
    return destination


def train_step2(output_dir: str, continuations: str, layout: str, loss: str, args) -> str:
    """An adapter trained on continuations only, with `loss`."""
    destination = os.path.join(output_dir, f"blsp-{layout}-{loss}")
    settings = {**read_recipe(STEP2_RECIPE), "dataset_name": continuations, "output_dir": destination, "loss": loss}
    settings.update(max_steps=args.max_steps, per_device_train_batch_size=args.batch_size)
    settings.update(learning_rate=args.learning_rate, warmup_steps=args.max_steps // 10)
    flags = as_flags(settings)
    train_adapter.main(flags)
    return destination


def save_untrained_blsp(whisper: str, llm: str, destination: str, layout: str) -> str:
    """BLSP around two bases with a freshly initialised adapter (seed 0, as step 2 starts): what BLSP starts from."""
    torch.manual_seed(0)
    model = BlspForConditionalGeneration.from_speech_text_pretrained(whisper, llm)
    processor = BlspProcessor.from_speech_text_pretrained(whisper, llm, config=model.config, prompt_layout=layout)
    model.save_pretrained(destination)
    processor.save_pretrained(destination)
    return destination


def save_untrained(output_dir: str, layout: str) -> str:
    """The world's model with a freshly initialised adapter."""
    return save_untrained_blsp(SPEECH_MODEL_DIR, LLM_DIR, os.path.join(output_dir, f"untrained-{layout}"), layout)


def score_system(system: dict, evaluation_set: str, task: str, output_dir: str) -> float:
    """The task's metric for one system on one evaluation set."""
    args = scoring.EvaluationArguments(
        model_name_or_path=system["path"],
        output_dir=output_dir,
        input=system["input"],
        task=task,
        instruction=language.INSTRUCTIONS[task],
        reference_column_name=task,
        asr_transcript_column_name="asr_transcript" if system["input"] == "cascade" else None,
        prompt_layout=system.get("layout"),
        batch_size=64,
        max_new_tokens=24,
    )
    metrics = scoring.evaluate(CorpusArguments(dataset_name=evaluation_set), args)
    return metrics[TASK_METRICS[task]]


def results_table(scores: dict, systems: list[str]) -> str:
    """Markdown: one row per (split, task), one column per system."""
    header = "| split | task (metric) | " + " | ".join(systems) + " |"
    lines = [header, "|" + "---|" * (len(systems) + 2)]
    for split in TEST_SPLITS:
        for task, metric in TASK_METRICS.items():
            cells = " | ".join(f"{scores[(split, task, system)]:.1f}" for system in systems)
            lines.append(f"| {split} | {task} ({metric}) | {cells} |")
    return "\n".join(lines)


def best_system(scores: dict, systems: list[str]) -> str:
    """The BLSP system with the highest mean answer + continuation accuracy on seen voices."""
    blsp = [name for name in systems if name.startswith("blsp")]
    return max(blsp, key=lambda name: sum(scores[("test_seen_voice", task, name)] for task in ("answer", "continue")))


def parse_arguments():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="runs/world")
    parser.add_argument("--max_steps", type=int, default=TRAINING["max_steps"], help="Training steps of each adapter.")
    parser.add_argument("--batch_size", type=int, default=TRAINING["batch_size"])
    parser.add_argument("--learning_rate", type=float, default=TRAINING["learning_rate"])
    parser.add_argument("--max_train_samples", type=int, default=None, help="Use only this many training clips.")
    parser.add_argument("--max_eval_samples", type=int, default=None, help="Score only this many clips per split.")
    parser.add_argument("--ablation", action="store_true", help="Train all four (layout, objective) adapters.")
    parser.add_argument("--threads", type=int, default=2, help="Torch threads (fewer can be faster on a busy machine).")
    return parser.parse_args()


def main():
    args = parse_arguments()
    torch.set_num_threads(args.threads)
    os.makedirs(args.output_dir, exist_ok=True)
    start = time.perf_counter()
    evaluation_sets = {
        split: write_evaluation_set(split, args.output_dir, args.max_eval_samples) for split in TEST_SPLITS
    }
    recipes = [(layout, loss) for layout in LAYOUTS for loss in LOSSES] if args.ablation else [RECIPE]
    layouts = dict.fromkeys(layout for layout, _ in recipes)
    continuations = {layout: generate_step1(args.output_dir, layout, args.max_train_samples) for layout in layouts}
    systems = {}
    for layout, loss in recipes:
        path = train_step2(args.output_dir, continuations[layout], layout, loss, args)
        systems[f"blsp {layout} {loss}"] = {"path": path, "input": "speech", "layout": layout}
    systems["text input"] = {"path": LLM_DIR, "input": "text", "layout": "speech_first"}
    systems["cascade"] = {"path": LLM_DIR, "input": "cascade", "layout": "speech_first"}
    untrained = save_untrained(args.output_dir, "speech_first")
    systems["untrained adapter"] = {"path": untrained, "input": "speech", "layout": "speech_first"}
    scores = {}
    for split, evaluation_set in evaluation_sets.items():
        for task in TASK_METRICS:
            for name, system in systems.items():
                directory = os.path.join(args.output_dir, "eval", split, task, name.replace(" ", "_"))
                scores[(split, task, name)] = score_system(system, evaluation_set, task, directory)
    table = results_table(scores, list(systems))
    with open(os.path.join(args.output_dir, "results.md"), "w", encoding="utf-8") as file:
        file.write(table + "\n")
    print(table)
    best = best_system(scores, list(systems))
    speech_llm = pipeline(model=systems[best]["path"], trust_remote_code=True)
    with open(evaluation_sets["test_heldout_voice"], encoding="utf-8") as file:
        clip = json.loads(file.readline())
    answer = speech_llm(clip["audio"], instruction=language.QUESTION_INSTRUCTION, max_new_tokens=8)
    print(f"\n{best} hears {clip['text']!r} (held-out voice) and answers {answer['generated_text']!r}.")
    print(f"Done in {time.perf_counter() - start:.0f} s.")


if __name__ == "__main__":
    main()
