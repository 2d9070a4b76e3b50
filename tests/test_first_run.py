"""First-run rough edges: labels over speech positions, conversations in the pipeline, a missing audio file."""

import os

import pytest
import torch
from transformers import pipeline

from configuration_blsp import IGNORE_INDEX
from modeling_blsp import BlspForConditionalGeneration
from processing_blsp import AudioInputError, BlspProcessor

INSTRUCTION = "Please transcribe the following audio."


@pytest.fixture(scope="module")
def qwen2(saved_blsp):
    model = BlspForConditionalGeneration.from_pretrained(saved_blsp["qwen2"]).eval()
    return model, BlspProcessor.from_pretrained(saved_blsp["qwen2"])


@pytest.fixture(scope="module")
def clip_paths(speech_corpus) -> list[str]:
    directory, rows = speech_corpus
    return [os.path.join(directory, row["file_name"]) for row in rows[:3]]


def user_turn(text: str, audio: str | None = None) -> dict:
    """A user message: the instruction first, then the audio (the processor's default layout)."""
    content = [{"type": "text", "text": text}]
    return {"role": "user", "content": content + ([{"type": "audio", "path": audio}] if audio else [])}


def test_labels_over_speech_positions_are_ignored(qwen2, clip_paths):
    model, processor = qwen2
    prompts = [processor.render_prompt(INSTRUCTION)] * 2
    inputs = processor(text=prompts, audio=clip_paths[:2], text_target=["a reply", "a longer reply here"])
    naive = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, IGNORE_INDEX)
    speech = inputs["input_ids"] == processor.speech_token_id
    assert speech.any() and int(speech.sum()) < int((naive != IGNORE_INDEX).sum())
    with torch.no_grad():
        loss = model(**{**inputs, "labels": naive}).loss
        expected = model(**{**inputs, "labels": naive.masked_fill(speech, IGNORE_INDEX)}).loss
        window = 6  # labels of the last positions only, as with logits_to_keep
        tail = model(**{**inputs, "labels": naive[:, -window:]}, logits_to_keep=window).loss
        expected_tail = model(**{**inputs, "labels": inputs["labels"][:, -window:]}, logits_to_keep=window).loss
    assert torch.isfinite(loss) and loss == expected
    assert tail == expected_tail


def test_pipeline_takes_a_conversation(saved_blsp, qwen2, clip_paths):
    model, processor = qwen2
    speech_llm = pipeline(model=saved_blsp["qwen2"], trust_remote_code=True)
    conversation = [user_turn(INSTRUCTION, clip_paths[0])]
    answer = speech_llm(conversation, max_new_tokens=6)
    assert answer == speech_llm(clip_paths[0], instruction=INSTRUCTION, max_new_tokens=6)
    inputs = processor.apply_chat_template(processor.read_audio_items(conversation))
    generated = model.generate(**inputs, do_sample=False, max_new_tokens=6)[:, inputs["input_ids"].shape[1] :]
    assert answer["generated_text"] == processor.decode(generated[0], skip_special_tokens=True).strip()


def test_pipeline_takes_a_batch_of_conversations(saved_blsp, clip_paths):
    speech_llm = pipeline(model=saved_blsp["qwen2"], trust_remote_code=True)
    follow_up = [
        user_turn(INSTRUCTION, clip_paths[1]),
        {"role": "assistant", "content": "the weather is nice"},
        user_turn("And now in German?"),
    ]
    conversations = [[user_turn(INSTRUCTION, path)] for path in clip_paths] + [follow_up]
    batched = speech_llm(conversations, batch_size=len(conversations), max_new_tokens=6)
    assert batched == [speech_llm(conversation, max_new_tokens=6) for conversation in conversations]
    assert len(batched) == 4 and all(set(result) == {"generated_text"} for result in batched)


def test_missing_audio_file_is_reported_as_missing(saved_blsp, tmp_path):
    speech_llm = pipeline(model=saved_blsp["qwen2"], trust_remote_code=True)
    missing = str(tmp_path / "no_such_clip.flac")
    # The pipeline runs the checkpoint's own copy of processing_blsp, whose AudioInputError is a ValueError.
    with pytest.raises(ValueError, match=r"no_such_clip\.flac.*does not exist") as error:
        speech_llm(missing, instruction=INSTRUCTION, max_new_tokens=4)
    assert type(error.value).__name__ == "AudioInputError" and "decode" not in str(error.value)
    with pytest.raises(ValueError, match="does not exist"):
        speech_llm([user_turn(INSTRUCTION, missing)], max_new_tokens=4)
    processor = BlspProcessor.from_pretrained(saved_blsp["qwen2"])
    with pytest.raises(AudioInputError, match=r"no_such_clip\.flac.*does not exist; check the path"):
        processor(text=processor.render_prompt(INSTRUCTION), audio=missing)
