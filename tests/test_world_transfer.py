"""BLSP's claim on the shipped miniature world: an adapter trained on continuations alone transfers.

The demo checkpoint (`world/models/blsp`, built by `python -m world.build_demo`: steps 1 and 2 through the real
scripts, continuation task only) hears held-out sentences in seen voices and in the held-out voice; evaluate.py scores
its transcriptions and answers against the same model with an untrained adapter. Training it takes longer than the
suite may run on noisy, recorded-like clips, so the suite scores the shipped checkpoint, which `tests/test_app.py`
checks against `world/demo_manifest.json` and the world it was trained on.
"""

import pytest
import torch

import evaluate as scoring
from data_blsp import CorpusArguments
from world import build_demo, language
from world.run import save_untrained, write_evaluation_set

EVAL_CLIPS = 50


def score(model_dir: str, evaluation_set: str, task: str, metric: str, output_dir) -> float:
    args = scoring.EvaluationArguments(
        model_name_or_path=model_dir,
        output_dir=str(output_dir),
        task={"repeat": "transcribe"}.get(task, task),
        instruction=language.INSTRUCTIONS[task],
        reference_column_name=task,
        batch_size=EVAL_CLIPS,
        max_new_tokens=20,
    )
    return scoring.evaluate(CorpusArguments(dataset_name=evaluation_set), args)[metric]


@pytest.mark.parametrize("split", ["test_seen_voice", "test_heldout_voice"])
def test_continuation_training_transfers_to_transcription_and_answering(split, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        evaluation_set = write_evaluation_set(split, str(tmp_path), EVAL_CLIPS)
        untrained = save_untrained(str(tmp_path), build_demo.LAYOUT)
        results = {
            name: {
                "wer": score(path, evaluation_set, "repeat", "wer", tmp_path / name / "repeat"),
                "answer": score(path, evaluation_set, "answer", "exact_match", tmp_path / name / "answer"),
            }
            for name, path in (("trained", build_demo.DEMO_DIR), ("untrained", untrained))
        }
    finally:
        torch.set_num_threads(threads)
    assert results["trained"]["wer"] < results["untrained"]["wer"] - 35, results
    assert results["trained"]["answer"] > results["untrained"]["answer"] + 45, results
