"""Score a BLSP checkpoint (speech in), the text-input upper bound or an ASR cascade on a dataset with an instruction.

    python evaluate_blsp.py --model_name_or_path path/or/hub-id --dataset_name librispeech_asr \
        --dataset_config_name clean --split test --task transcribe --output_dir eval/librispeech

Writes `predictions.jsonl` (one line per row) and `metrics.json` (WER after normalisation, sacrebleu BLEU,
exact-match accuracy, counts) to `--output_dir`. Rows whose audio cannot be used are skipped and counted.
"""

import json

from blsp_steps.arguments import parse_script_arguments
from blsp_steps.corpora import CorpusArguments
from blsp_steps.evaluation import EvaluationArguments, evaluate


def main():
    corpus, args = parse_script_arguments((CorpusArguments, EvaluationArguments))
    metrics = evaluate(corpus, args)
    keys = ("task", "input", "rows", "scored", "rejected", "wer", "bleu", "exact_match")
    print(json.dumps({key: metrics[key] for key in keys if key in metrics}, indent=2))


if __name__ == "__main__":
    main()
