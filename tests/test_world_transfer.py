"""BLSP's claim on the shipped miniature world: an adapter trained on continuations alone transfers.

The demo checkpoint (`world/models/blsp`, built by `python -m world.build_demo`: steps 1 and 2 through the real
scripts, continuation task only) hears held-out sentences in seen voices and in the held-out voice; its transcriptions
and answers are scored as `world.run` scores them, against the same model with an untrained adapter. Training it takes
longer than the suite may run on noisy, recorded-like clips, so the suite scores the shipped checkpoint, which
`tests/test_app.py` checks against `world/demo_manifest.json` and the world it was trained on.
"""

import pytest
import torch

from world import build_demo
from world.run import save_untrained, score_system, write_evaluation_set

EVAL_CLIPS = 50


@pytest.mark.parametrize("split", ["test_seen_voice", "test_heldout_voice"])
def test_continuation_training_transfers_to_transcription_and_answering(split, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        evaluation_set = write_evaluation_set(split, str(tmp_path), EVAL_CLIPS)
        untrained = save_untrained(str(tmp_path), build_demo.LAYOUT)
        results = {
            name: {
                metric: score_system(system, evaluation_set, task, str(tmp_path / name / task))
                for metric, task in (("wer", "transcribe"), ("answer", "answer"))
            }
            for name, path in (("trained", build_demo.DEMO_DIR), ("untrained", untrained))
            for system in [{"path": path, "input": "speech", "layout": build_demo.LAYOUT}]
        }
    finally:
        torch.set_num_threads(threads)
    assert results["trained"]["wer"] < results["untrained"]["wer"] - 35, results
    assert results["trained"]["answer"] > results["untrained"]["answer"] + 45, results
