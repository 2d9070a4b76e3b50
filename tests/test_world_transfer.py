"""BLSP's claim at CI size, in the miniature world: an adapter trained on continuations alone transfers.

Steps 1 and 2 run through the real scripts on a subset of the world's training clips; evaluate.py scores the
trained adapter and the untrained one on held-out sentences in seen voices.
"""

import torch

import evaluate as scoring
from data_blsp import CorpusArguments
from world import language
from world.run import generate_step1, save_untrained, train_step2, write_evaluation_set

TRAIN_CLIPS, EVAL_CLIPS, STEPS = 400, 40, 700


class TrainingSettings:
    max_steps, batch_size, learning_rate = STEPS, 16, 1e-3


def score(model_dir: str, evaluation_set: str, task: str, metric: str, tmp_path) -> float:
    args = scoring.EvaluationArguments(
        model_name_or_path=model_dir,
        output_dir=str(tmp_path / f"{task}-{abs(hash(model_dir))}"),
        task={"repeat": "transcribe"}.get(task, task),
        instruction=language.INSTRUCTIONS[task],
        reference_column_name=task,
        batch_size=EVAL_CLIPS,
        max_new_tokens=20,
    )
    return scoring.evaluate(CorpusArguments(dataset_name=evaluation_set), args)[metric]


def test_continuation_training_transfers_to_transcription_and_answering(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        evaluation_set = write_evaluation_set("test_seen_voice", str(tmp_path), EVAL_CLIPS)
        continuations = generate_step1(str(tmp_path), "speech_first", TRAIN_CLIPS)
        trained = train_step2(str(tmp_path), continuations, "speech_first", "ce", TrainingSettings)
        untrained = save_untrained(str(tmp_path), "speech_first")
        results = {
            name: {
                "wer": score(path, evaluation_set, "repeat", "wer", tmp_path),
                "answer": score(path, evaluation_set, "answer", "exact_match", tmp_path),
            }
            for name, path in (("trained", trained), ("untrained", untrained))
        }
    finally:
        torch.set_num_threads(threads)
    assert results["trained"]["wer"] < results["untrained"]["wer"] - 25, results
    assert results["trained"]["answer"] > results["untrained"]["answer"] + 40, results
