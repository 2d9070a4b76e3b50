"""What a CTC-trained adapter hands the LLM, read without the LLM: with `speech_compression="ctc"` the kept frames'
top tokens (greedy CTC through the LLM's token embeddings) are the words the LLM receives. Their WER against the
transcript, per split, is the adapter's own recognition, the ceiling of everything the LLM does with speech: on
`dev` (training voices, sentences in no other split: runs are chosen on it), held-out voices and real human speech.

    python -m english.readout --blsp english/models/blsp-whisper-tiny.en-smollm2-135m \
        --speech_model_name_or_path converted/whisper-tiny.en --text_model_name_or_path converted/smollm2-135m-instruct

With `ctc_beam_size` above 1, the tokens of a CTC prefix beam search that the LLM rescores; a grid of
`--ctc_lm_weight` and `--ctc_length_bonus` values reads every clip once and scores each setting (choose them on dev):

    python -m english.readout --blsp runs/english/<run> --splits dev --ctc_lm_weight 0.2 0.3 --ctc_length_bonus 1 2 \
        --config_overrides ctc_temperature=0,ctc_beam_size=16,ctc_lm_boundary_token_id=198
"""

import argparse
import json
import os

import torch

from adapter_blsp import most_read_frame, pick_hypothesis
from blsp_steps import evaluation as scoring
from blsp_steps.arguments import parse_config_overrides
from blsp_steps.augmentation import telephone_band
from english.build_corpus import TEST_SPLITS
from english.derived import read_rows
from modeling_blsp import BlspForConditionalGeneration, ctc_readout
from processing_blsp import BlspProcessor, load_audio
from world.build_speech import cut_silence

ENGLISH_DIR = os.path.dirname(os.path.abspath(__file__))


def read_out(model: BlspForConditionalGeneration, processor: BlspProcessor, clips: list) -> list[str]:
    """The text of each clip's kept frames, as `compress_speech` reads them (`read_speech_tokens`: CTC's greedy
    collapse, or the model's beam search where its config sets `ctc_beam_size`)."""
    inputs = processor(text=[processor.render_prompt("")] * len(clips), audio=clips)
    speech_mask = inputs["input_ids"] == model.config.speech_token_id
    with torch.no_grad():
        speech = model.get_speech_features(inputs["input_features"], inputs["input_features_mask"])
        tokens, left_out = model.read_speech_tokens(
            ctc_readout(speech, model.get_input_embeddings().weight), speech_mask
        )
    layout = torch.full(speech_mask.shape, -1)
    layout[speech_mask] = tokens
    kept = speech_mask & ~left_out
    return [processor.tokenizer.decode(layout[row][kept[row]]).strip() for row in range(len(clips))]


def read_out_rescored(
    model: BlspForConditionalGeneration, processor: BlspProcessor, clips: list, settings: list[tuple[float, float]]
) -> list[list[str]]:
    """Each clip's readout at each (ctc_lm_weight, ctc_length_bonus) of `settings`, as the model's beam search
    (`config.ctc_beam_size`) reads it: its hypotheses and their LLM scores computed once, the pick made per setting."""
    inputs = processor(text=[processor.render_prompt("")] * len(clips), audio=clips)
    counts = (inputs["input_ids"] == model.config.speech_token_id).sum(-1).tolist()
    with torch.no_grad():
        speech = model.get_speech_features(inputs["input_features"], inputs["input_features_mask"])
        logits = ctc_readout(speech, model.get_input_embeddings().weight).float()
    readouts = [[] for _ in settings]
    for clip_logits in logits.split(counts):
        hypotheses, language = model.rescorable_hypotheses(clip_logits.log_softmax(-1))
        for readout, (lm_weight, length_bonus) in zip(readouts, settings):
            tokens = pick_hypothesis(hypotheses, language, lm_weight, length_bonus)[0]
            # of a clip read as all blanks, its frame most read as a token, as compress_speech keeps it
            tokens = tokens or [int(clip_logits[most_read_frame(clip_logits), 1:].argmax())]
            readout.append(processor.tokenizer.decode(tokens).strip())
    return readouts


SILENCES = {"leading_silence", "trailing_silence"}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blsp", required=True, help="A BLSP checkpoint whose adapter was trained with --loss ctc.")
    parser.add_argument("--speech_model_name_or_path", default=None)
    parser.add_argument("--text_model_name_or_path", default=None)
    parser.add_argument("--data_dir", default=os.path.join(ENGLISH_DIR, "data"))
    parser.add_argument(
        "--splits", nargs="*", default=["dev", *TEST_SPLITS], help="`dev` chooses runs; others: held out."
    )
    parser.add_argument("--max_samples", type=int, default=None)
    parser.add_argument(
        "--telephone_band",
        action="store_true",
        help="Also read each split through the telephone band (8 kHz and back, as the real recordings are): rows "
        "<split>+telephone.",
    )
    parser.add_argument(
        "--cut_silence",
        action="store_true",
        help="Also read each split with its recorded silence cut off (rows <split>+cut: the clips' `leading_silence` "
        "and `trailing_silence`, leaving the speech's own margins of up to 80 ms), about as tight at the speech as the "
        "real prompts are; splits without those columns are left out of these rows.",
    )
    parser.add_argument(
        "--config_overrides",
        default=None,
        help="Decode-time settings for this run, e.g. 'ctc_temperature=0,ctc_beam_size=16,ctc_lm_weight=0.3': the "
        "readout is of the tokens the LLM reads at ctc_temperature 0 (greedy, or by a beam the LLM rescores).",
    )
    parser.add_argument(
        "--ctc_lm_weight",
        type=float,
        nargs="+",
        default=None,
        help="With a beam (ctc_beam_size above 1): the LLM's weight in the rescoring, one or more values (a grid "
        "with --ctc_length_bonus, each a row <split> lm=<weight> bonus=<bonus>: choose them on dev); by default the "
        "checkpoint's.",
    )
    parser.add_argument(
        "--ctc_length_bonus", type=float, nargs="+", default=None, help="As --ctc_lm_weight, per token."
    )
    parser.add_argument("--examples", type=int, default=3, help="Clips printed per split with their readout.")
    parser.add_argument("--output_dir", default=None, help="Also write each split's readouts here (<split>.jsonl).")
    args = parser.parse_args()
    bases = {"speech_model_name_or_path": args.speech_model_name_or_path}
    bases["text_model_name_or_path"] = args.text_model_name_or_path
    bases = {key: value for key, value in bases.items() if value}
    model = BlspForConditionalGeneration.from_pretrained(
        args.blsp, **bases, **parse_config_overrides(args.config_overrides)
    ).eval()
    processor = BlspProcessor.from_pretrained(args.blsp)
    grid = None
    if args.ctc_lm_weight is not None or args.ctc_length_bonus is not None:
        if model.config.ctc_beam_size == 1:
            parser.error(
                "--ctc_lm_weight and --ctc_length_bonus rescore a beam: set ctc_beam_size above 1 (--config_overrides)."
            )
        weights = args.ctc_lm_weight if args.ctc_lm_weight is not None else [model.config.ctc_lm_weight]
        bonuses = args.ctc_length_bonus if args.ctc_length_bonus is not None else [model.config.ctc_length_bonus]
        grid = [(weight, bonus) for weight in weights for bonus in bonuses]
    lines = ["| split | clips | adapter readout WER (%) |", "|---|---|---|"]
    channels = [("", lambda clip, row: clip)]
    channels += [("+telephone", lambda clip, row: telephone_band(clip, 16000))] if args.telephone_band else []
    channels += [("+cut", cut_silence)] if args.cut_silence else []
    for split, (suffix, channel) in ((split, channel) for split in args.splits for channel in channels):
        rows = read_rows(os.path.join(args.data_dir, split))[: args.max_samples]
        if channel is cut_silence and not all(row.keys() >= SILENCES for row in rows):
            print(f"{split}+cut left out: its rows do not record their silences")
            continue
        named = {}
        for start in range(0, len(rows), 20):
            batch = rows[start : start + 20]
            clips = [load_audio(os.path.join(args.data_dir, split, row["file_name"]), 16000) for row in batch]
            clips = [channel(clip, row) for clip, row in zip(clips, batch)]
            if grid:
                for setting, readout in zip(grid, read_out_rescored(model, processor, clips, grid)):
                    named.setdefault(f"{split}{suffix} lm={setting[0]:g} bonus={setting[1]:g}", []).extend(readout)
            else:
                named.setdefault(split + suffix, []).extend(read_out(model, processor, clips))
        for name, readouts in named.items():
            lines.append(write_readouts(name, rows, readouts, args))
    print("\n".join(lines))


def write_readouts(name: str, rows: list[dict], readouts: list[str], args: argparse.Namespace) -> str:
    """Prints a split's first readouts, writes them all to `args.output_dir`; returns its WER row."""
    for row, readout in list(zip(rows, readouts))[: args.examples]:
        print(f"{name}: {row['text']!r} -> {readout!r}")
    if args.output_dir:
        os.makedirs(args.output_dir, exist_ok=True)
        with open(os.path.join(args.output_dir, f"{name}.jsonl"), "w", encoding="utf-8") as file:
            for row, readout in zip(rows, readouts):
                record = {"file_name": row["file_name"], "text": row["text"], "readout": readout}
                file.write(json.dumps(record) + "\n")
    wer = scoring.score(readouts, [row["text"] for row in rows])["wer"]
    return f"| {name} | {len(rows)} | {wer:.1f} |"


if __name__ == "__main__":
    main()
