"""What a CTC-trained adapter hands the LLM, read without the LLM: with `speech_compression="ctc"` the kept frames'
top tokens (greedy CTC through the LLM's token embeddings) are the words the LLM receives. Their WER against the
transcript, per split, is the adapter's own recognition, the ceiling of everything the LLM does with speech: on
`dev` (training voices, sentences in no other split: runs are chosen on it), held-out voices and real human speech.

    python -m english.readout --blsp english/models/blsp-whisper-tiny.en-smollm2-135m \
        --speech_model_name_or_path converted/whisper-tiny.en --text_model_name_or_path converted/smollm2-135m-instruct
"""

import argparse
import json
import os

import torch

from blsp_steps import evaluation as scoring
from blsp_steps.augmentation import telephone_band
from english.build_corpus import TEST_SPLITS
from english.derived import read_rows
from modeling_blsp import BlspForConditionalGeneration, ctc_readout
from processing_blsp import BlspProcessor, load_audio
from world.build_speech import cut_silence

ENGLISH_DIR = os.path.dirname(os.path.abspath(__file__))


def read_out(model: BlspForConditionalGeneration, processor: BlspProcessor, clips: list) -> list[str]:
    """The text of each clip's kept frames (the frames `compress_speech` leaves in, as their top tokens; of a clip read
    as all blanks, the one frame it keeps is read as its top token other than the blank)."""
    inputs = processor(text=[processor.render_prompt("")] * len(clips), audio=clips)
    speech_mask = inputs["input_ids"] == model.config.speech_token_id
    with torch.no_grad():
        speech = model.get_speech_features(inputs["input_features"], inputs["input_features_mask"])
        _, attention_mask = model.compress_speech(speech, speech_mask, inputs["attention_mask"])
        layout = torch.full(speech_mask.shape, -1)
        layout[speech_mask] = ctc_readout(speech, model.get_input_embeddings().weight)[..., 1:].argmax(-1)
    kept = speech_mask & attention_mask.bool()
    return [processor.tokenizer.decode(layout[row][kept[row]]).strip() for row in range(len(clips))]


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
    parser.add_argument("--examples", type=int, default=3, help="Clips printed per split with their readout.")
    parser.add_argument("--output_dir", default=None, help="Also write each split's readouts here (<split>.jsonl).")
    args = parser.parse_args()
    bases = {"speech_model_name_or_path": args.speech_model_name_or_path}
    bases["text_model_name_or_path"] = args.text_model_name_or_path
    model = BlspForConditionalGeneration.from_pretrained(
        args.blsp, **{key: value for key, value in bases.items() if value}
    ).eval()
    processor = BlspProcessor.from_pretrained(args.blsp)
    lines = ["| split | clips | adapter readout WER (%) |", "|---|---|---|"]
    channels = [("", lambda clip, row: clip)]
    channels += [("+telephone", lambda clip, row: telephone_band(clip, 16000))] if args.telephone_band else []
    channels += [("+cut", cut_silence)] if args.cut_silence else []
    for split, (suffix, channel) in ((split, channel) for split in args.splits for channel in channels):
        rows = read_rows(os.path.join(args.data_dir, split))[: args.max_samples]
        if channel is cut_silence and not all(row.keys() >= SILENCES for row in rows):
            print(f"{split}+cut left out: its rows do not record their silences")
            continue
        readouts = []
        for start in range(0, len(rows), 20):
            batch = rows[start : start + 20]
            clips = [load_audio(os.path.join(args.data_dir, split, row["file_name"]), 16000) for row in batch]
            readouts += read_out(model, processor, [channel(clip, row) for clip, row in zip(clips, batch)])
        name = split + suffix
        for row, readout in list(zip(rows, readouts))[: args.examples]:
            print(f"{name}: {row['text']!r} -> {readout!r}")
        if args.output_dir:
            os.makedirs(args.output_dir, exist_ok=True)
            with open(os.path.join(args.output_dir, f"{name}.jsonl"), "w", encoding="utf-8") as file:
                for row, readout in zip(rows, readouts):
                    record = {"file_name": row["file_name"], "text": row["text"], "readout": readout}
                    file.write(json.dumps(record) + "\n")
        wer = scoring.score(readouts, [row["text"] for row in rows])["wer"]
        lines.append(f"| {name} | {len(rows)} | {wer:.1f} |")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
