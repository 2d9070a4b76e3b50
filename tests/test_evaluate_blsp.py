"""evaluate_blsp.py: metrics, predictions for speech and text input, rejected rows."""

import json
import os
import shutil

import pytest
import torch
from transformers import NoRepeatNGramLogitsProcessor

from blsp_steps.corpora import CorpusArguments
from blsp_steps.evaluation import EvaluationArguments, NoRepeatReplyNGram, evaluate, first_line, score
from processing_blsp import BlspProcessor, render_prompt


def test_score_counts_words_and_exact_matches():
    perfect = score(
        ["The cat sat on the mat.", "a dog ran home fast"], ["the cat sat on the mat", "A dog ran home fast!"]
    )
    assert perfect == {"wer": 0.0, "bleu": pytest.approx(100.0), "exact_match": 100.0}
    one_wrong = score(["the cat sat down"], ["the dog sat down"])
    assert one_wrong["wer"] == 25.0
    assert one_wrong["exact_match"] == 0.0
    trailing_off = score(["to exit the menu", "press 1.5 now"], ["To exit the menu...", "Press 1.5 now."])
    assert trailing_off["wer"] == 0.0


@pytest.fixture(scope="module")
def corpus_with_bad_row(speech_corpus, tmp_path_factory):
    source, rows = speech_corpus
    directory = tmp_path_factory.mktemp("eval_corpus")
    for row in rows[:4]:
        shutil.copy(os.path.join(source, row["file_name"]), directory / row["file_name"])
    (directory / "broken.flac").write_bytes(b"not audio at all")
    records = [{**row, "translation": row["text"].upper()} for row in rows[:4]]
    records.append({"file_name": "broken.flac", "text": "broken", "translation": "BROKEN"})
    (directory / "metadata.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    return str(directory), records


def read_predictions(directory: str) -> list[dict]:
    with open(os.path.join(directory, "predictions.jsonl")) as file:
        return [json.loads(line) for line in file]


def test_speech_input_predictions_match_the_model_and_bad_rows_are_counted(saved_blsp, corpus_with_bad_row, tmp_path):
    directory, records = corpus_with_bad_row
    args = EvaluationArguments(
        model_name_or_path=saved_blsp["qwen2"],
        output_dir=str(tmp_path),
        task="translate",
        reference_column_name="translation",
        batch_size=2,
        max_new_tokens=4,
    )
    metrics = evaluate(CorpusArguments(dataset_name=directory), args)
    assert (metrics["rows"], metrics["scored"], metrics["rejected"]) == (5, 4, 1)
    assert "broken.flac" in metrics["rejects"][0]["reason"]
    predictions = read_predictions(str(tmp_path))
    assert [p["reference"] for p in predictions] == [r["translation"] for r in records[:4]]
    from transformers import AutoModel

    model = AutoModel.from_pretrained(saved_blsp["qwen2"], trust_remote_code=True).eval()
    processor = BlspProcessor.from_pretrained(saved_blsp["qwen2"])
    inputs = processor(
        text=processor.render_prompt(args.instruction or "Please translate the following audio into German text."),
        audio=os.path.join(directory, records[0]["file_name"]),
    )
    output = model.generate(**inputs, do_sample=False, max_new_tokens=4)[:, inputs["input_ids"].shape[1] :]
    assert predictions[0]["prediction"] == processor.batch_decode(output, skip_special_tokens=True)[0].strip()
    assert set(metrics) >= {"wer", "bleu", "exact_match"}


def test_text_input_uses_the_llm_on_the_transcript(saved_blsp, corpus_with_bad_row, tmp_path):
    directory, records = corpus_with_bad_row
    args = EvaluationArguments(
        model_name_or_path=saved_blsp["llama"],
        output_dir=str(tmp_path),
        input="text",
        task="continue",
        batch_size=3,
        max_new_tokens=5,
    )
    metrics = evaluate(CorpusArguments(dataset_name=directory), args)
    assert (metrics["scored"], metrics["rejected"]) == (5, 0)
    processor = BlspProcessor.from_pretrained(saved_blsp["llama"])
    from transformers import AutoModel

    llm = AutoModel.from_pretrained(saved_blsp["llama"], trust_remote_code=True).language_model.eval()
    for prediction, record in zip(read_predictions(str(tmp_path)), records):
        prompt = render_prompt(processor.tokenizer, prediction["instruction"], record["text"])
        ids = processor.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            output = llm.generate(**ids, do_sample=False, max_new_tokens=5)[0, ids["input_ids"].shape[1] :]
        assert prediction["prediction"] == processor.tokenizer.decode(output, skip_special_tokens=True).strip()
        assert prediction["input_text"] == record["text"]


def test_each_row_gets_its_own_budget_and_the_first_line_is_scored(saved_blsp, corpus_with_bad_row, tmp_path):
    """--max_new_tokens_per_second gives a row what generating it alone with its own max_new_tokens gives; with
    --first_line the reply's first non-empty line is scored and the whole reply is kept beside it."""
    directory, records = corpus_with_bad_row
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    durations = [0.5, 1.0, 2.0, 9.0]
    rows = [{**record, "duration": duration} for record, duration in zip(records[:4], durations)]
    (corpus / "metadata.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    args = EvaluationArguments(
        model_name_or_path=saved_blsp["llama"],
        output_dir=str(tmp_path / "eval"),
        input="text",
        batch_size=4,
        max_new_tokens=12,
        max_new_tokens_per_second=2,
        first_line=True,
    )
    evaluate(CorpusArguments(dataset_name=str(corpus)), args)
    predictions = read_predictions(args.output_dir)
    assert [p["max_new_tokens"] for p in predictions] == [9, 10, 12, 12]  # 8 + 2 per second, at most 12
    processor = BlspProcessor.from_pretrained(saved_blsp["llama"])
    from transformers import AutoModel

    llm = AutoModel.from_pretrained(saved_blsp["llama"], trust_remote_code=True).language_model.eval()
    for prediction, row in zip(predictions, rows):
        prompt = render_prompt(processor.tokenizer, prediction["instruction"], row["text"])
        ids = processor.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            output = llm.generate(**ids, do_sample=False, max_new_tokens=prediction["max_new_tokens"])
        alone = processor.tokenizer.decode(output[0, ids["input_ids"].shape[1] :], skip_special_tokens=True).strip()
        assert prediction.get("reply", prediction["prediction"]) == alone
        assert prediction["prediction"] == first_line(alone)
    assert first_line("\n\n  Call forward.  \nAnd more.") == "Call forward."
    assert first_line("\n \n") == ""


def test_a_budget_needs_the_duration_column(saved_blsp, corpus_with_bad_row, tmp_path):
    directory, _ = corpus_with_bad_row
    args = EvaluationArguments(
        model_name_or_path=saved_blsp["llama"], output_dir=str(tmp_path), input="text", max_new_tokens_per_second=2
    )
    with pytest.raises(ValueError, match=r"no column\(s\) \['duration'\]"):
        evaluate(CorpusArguments(dataset_name=directory), args)


def test_history_turns_come_before_each_row_and_a_bad_file_is_named(saved_blsp, corpus_with_bad_row, tmp_path):
    directory, records = corpus_with_bad_row
    history = [{"role": "user", "content": "Repeat: a red door"}, {"role": "assistant", "content": "a red door"}]
    (tmp_path / "history.json").write_text(json.dumps(history))
    args = EvaluationArguments(
        model_name_or_path=saved_blsp["llama"],
        output_dir=str(tmp_path / "eval"),
        input="text",
        history_file=str(tmp_path / "history.json"),
        max_new_tokens=4,
    )
    evaluate(CorpusArguments(dataset_name=directory), args)
    processor = BlspProcessor.from_pretrained(saved_blsp["llama"])
    from transformers import AutoModel

    llm = AutoModel.from_pretrained(saved_blsp["llama"], trust_remote_code=True).language_model.eval()
    prediction, record = read_predictions(args.output_dir)[0], records[0]
    prompt = render_prompt(processor.tokenizer, prediction["instruction"], record["text"], history=history)
    assert prompt.index("a red door") < prompt.index(record["text"])
    ids = processor.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        output = llm.generate(**ids, do_sample=False, max_new_tokens=4)[0, ids["input_ids"].shape[1] :]
    assert prediction["prediction"] == processor.tokenizer.decode(output, skip_special_tokens=True).strip()
    (tmp_path / "bad.json").write_text(json.dumps([{"role": "user"}]))
    args.history_file = str(tmp_path / "bad.json")
    with pytest.raises(ValueError, match=r"bad.json: turn 0 .* a history file is a JSON list"):
        evaluate(CorpusArguments(dataset_name=directory), args)


def test_reply_ngram_block_counts_the_reply_only():
    """A reply may copy the prompt's n-grams (a transcription prompt holds the text) but not repeat its own."""
    scores = torch.zeros(1, 8)
    copying = torch.tensor([[1, 2, 3, 1, 2]])  # prompt 1 2 3, reply so far 1 2
    assert NoRepeatNGramLogitsProcessor(3)(copying, scores)[0, 3] == -float("inf")  # transformers' own bans the copy
    assert torch.isfinite(NoRepeatReplyNGram(3, prompt_length=3)(copying, scores)).all()
    looping = torch.tensor([[1, 2, 3, 4, 5, 4, 5]])  # reply 4 5 4 5: "4 5 4" was written, so 4 may not follow 4 5
    banned = NoRepeatReplyNGram(3, prompt_length=3)(looping, scores)[0]
    assert banned[4] == -float("inf") and torch.isfinite(banned[torch.arange(8) != 4]).all()
