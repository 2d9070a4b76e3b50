"""The shipped miniature world matches what its scripts and `world/manifest.json` declare, and its models work."""

import json
import os
from dataclasses import replace

import numpy as np
import pytest
import soundfile
import torch
from transformers import (
    AutoFeatureExtractor,
    AutoModel,
    AutoModelForCausalLM,
    AutoTokenizer,
    WhisperFeatureExtractor,
)
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from processing_blsp import PROMPT_LAYOUTS, TASK_INSTRUCTIONS, BlspProcessor, log_mel, render_prompt
from world import build_speech, build_world, language
from world.cascade import SpeechRecognizer
from world.pretrain_llm import greedy_responses
from world.pretrain_speech import read_split, word_error_rate

SPLITS = ("train", *build_speech.TEST_SPLITS)
MAX_WORLD_BYTES = 40 * 2**20

pytestmark = pytest.mark.skipif(not os.path.exists(build_world.MANIFEST), reason="the world is not built")


@pytest.fixture(scope="module")
def manifest() -> dict:
    with open(build_world.MANIFEST) as file:
        return language.current_task_names(json.load(file))  # built when transcription was called "repeat"


@pytest.fixture(scope="module")
def rows() -> dict[str, list[dict]]:
    return {split: read_split(os.path.join(build_world.SPEECH_DIR, split)) for split in SPLITS}


def test_language_matches_manifest(manifest):
    assert manifest["language"] == json.loads(json.dumps(build_world.language_record()))
    train, held_out = language.split_sentences("train"), language.split_sentences("held_out")
    assert not {s.text for s in train} & {s.text for s in held_out}
    assert {s.template for s in held_out} == set(language.TEMPLATES)


def test_records_with_the_old_task_name_read_in_the_current_vocabulary():
    record = {
        "instructions": {"continue": "C.", "repeat": "Repeat the following text."},
        "accuracy": {"train": {"repeat/speech_first": 1.0, "answer/speech_first": 0.5}},
        "tokenizer_vocabulary": ["repeat", "the"],
    }
    assert language.current_task_names(record) == {
        "instructions": {"continue": "C.", "transcribe": "Repeat the following text."},
        "accuracy": {"train": {"transcribe/speech_first": 1.0, "answer/speech_first": 0.5}},
        "tokenizer_vocabulary": ["repeat", "the"],
    }
    assert set(language.INSTRUCTIONS) == set(TASK_INSTRUCTIONS)  # the world's tasks are the evaluation's


def test_every_task_depends_on_every_content_word():
    for template in language.TEMPLATES:
        sentence = next(s for s in language.all_sentences() if s.template == template)
        for slot, _ in sentence.slots:
            other_word = next(w for w in language.SLOT_WORDS[slot] if w not in sentence.words.values())
            changed = replace(sentence, slots=tuple((k, other_word if k == slot else v) for k, v in sentence.slots))
            for task in ("continue", "transcribe", "translate"):
                assert language.response(task, changed) != language.response(task, sentence), (task, slot)


def test_speech_splits_match_manifest(manifest, rows):
    for split in SPLITS:
        record = build_world.split_record(os.path.join(build_world.SPEECH_DIR, split))
        assert record == manifest["speech"]["splits"][split], split


def test_speech_splits_are_disjoint_and_held_out(rows):
    held_out = language.held_out_ids()
    for split, split_rows in rows.items():
        for row in split_rows:
            assert language.parse(row["text"]).sentence_id == row["sentence_id"]
            assert (row["sentence_id"] in held_out) == (split != "train"), (split, row)
    train = rows["train"]
    assert {(row["synthesizer"], row["voice"]) for row in train} <= set(build_speech.training_voices())
    assert {row["synthesizer"] for row in train} == {build_speech.ESPEAK, build_speech.FESTIVAL}
    assert {(row["synthesizer"], row["voice"], row["speed"]) for row in rows["test_heldout_voice"]} == {
        (build_speech.ESPEAK, build_speech.HELD_OUT_VOICE, build_speech.HELD_OUT_SPEED)
    }
    accent, variant = build_speech.HELD_OUT_VOICE.split("+")
    espeak_voices = [row["voice"].split("+") for row in train if row["synthesizer"] == build_speech.ESPEAK]
    assert accent not in {voice[0] for voice in espeak_voices} and variant not in {voice[1] for voice in espeak_voices}
    assert build_speech.HELD_OUT_SPEED not in {row["speed"] for row in train}
    festival_voices = {(row["synthesizer"], row["voice"]) for row in rows["test_heldout_festival_voice"]}
    assert festival_voices == {(build_speech.FESTIVAL, build_speech.HELD_OUT_FESTIVAL_VOICE)}
    assert build_speech.HELD_OUT_FESTIVAL_VOICE not in {row["voice"] for row in train}
    texts = [[row["text"] for row in rows[split]] for split in build_speech.TEST_SPLITS]
    assert all(split_texts == texts[0] for split_texts in texts)


def test_clips_sound_recorded(rows):
    """Shipped clips have their drawn level, and silence with background noise at the drawn SNR around the speech.

    Brown noise wanders too slowly for a fraction of a second of it to measure its level, so only white and pink
    noise are measured, as a median over clips.
    """
    low, high = build_speech.RECORDING["peak_dbfs"]
    snr_errors = []
    for split, split_rows in rows.items():
        for row in split_rows[:: max(1, len(split_rows) // 50)]:
            samples, rate = soundfile.read(os.path.join(build_world.SPEECH_DIR, split, row["file_name"]))
            lead, tail = (int(row[name] * rate) for name in ("leading_silence", "trailing_silence"))
            speech_rms = np.sqrt(np.mean(samples[lead:-tail] ** 2))
            assert low <= row["peak_dbfs"] <= high
            assert 20 * np.log10(np.abs(samples).max()) == pytest.approx(row["peak_dbfs"], abs=0.3), row
            for silence in (samples[:lead], samples[-tail:]):
                silence_rms = np.sqrt(np.mean(silence**2))
                assert silence_rms < speech_rms, (split, row)
                if row["noise"] != "brown" and row["snr_db"] < 20 and len(silence) > 0.3 * rate:
                    snr_errors.append(20 * np.log10(speech_rms / silence_rms) - row["snr_db"])
    assert len(snr_errors) > 10 and abs(np.median(snr_errors)) < 2, snr_errors


def test_clips_are_16khz_mono_flac(rows):
    for split, split_rows in rows.items():
        for row in split_rows[:: max(1, len(split_rows) // 20)]:
            info = soundfile.info(os.path.join(build_world.SPEECH_DIR, split, row["file_name"]))
            assert (info.format, info.samplerate, info.channels) == ("FLAC", 16000, 1)


def test_model_files_match_manifest(manifest):
    assert build_world.file_records(build_world.LLM_DIR) == manifest["llm"]["files"]
    assert build_world.file_records(build_world.SPEECH_MODEL_DIR) == manifest["speech_model"]["files"]


def test_world_is_small():
    total = sum(
        os.path.getsize(os.path.join(directory, name))
        for directory, _, names in os.walk(os.path.dirname(build_world.MANIFEST))
        for name in names
    )
    assert total < MAX_WORLD_BYTES


def test_speech_model_loads_like_a_whisper_checkpoint():
    encoder = AutoModel.from_pretrained(build_world.SPEECH_MODEL_DIR).get_encoder()
    assert isinstance(encoder, WhisperEncoder)
    assert encoder.config.num_mel_bins == 80 and encoder.config.max_source_positions == 1500
    assert isinstance(AutoFeatureExtractor.from_pretrained(build_world.SPEECH_MODEL_DIR), WhisperFeatureExtractor)


def test_cascade_features_are_blsp_features(rows):
    processor = BlspProcessor.from_speech_text_pretrained(build_world.SPEECH_MODEL_DIR, build_world.LLM_DIR)
    clip = processor.load_audio(os.path.join(build_world.SPEECH_DIR, "train", rows["train"][0]["file_name"]))
    inputs = processor.extract_features([clip])[0]
    features = inputs["input_features"][0, :, : int(inputs["input_features_mask"].sum())].numpy()
    np.testing.assert_array_equal(features, log_mel(processor.feature_extractor, clip))


def test_speech_model_word_error_rate_matches_manifest(manifest, rows):
    split = "test_seen_voice"
    paths = [os.path.join(build_world.SPEECH_DIR, split, row["file_name"]) for row in rows[split]]
    transcripts = SpeechRecognizer(build_world.SPEECH_MODEL_DIR).transcribe(paths)
    rate = word_error_rate([row["text"] for row in rows[split]], transcripts)
    assert rate == pytest.approx(manifest["speech_model"]["ctc_wer"][split], abs=0.01)


def test_llm_follows_the_four_instructions(manifest):
    tokenizer = AutoTokenizer.from_pretrained(build_world.LLM_DIR)
    model = AutoModelForCausalLM.from_pretrained(build_world.LLM_DIR)
    assert tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))) == manifest["llm"]["tokenizer_vocabulary"]
    assert tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token is not None
    sentences = language.split_sentences("held_out")[::40]
    cases = [(task, layout, s) for task in language.INSTRUCTIONS for layout in PROMPT_LAYOUTS for s in sentences]
    prompts = [render_prompt(tokenizer, language.INSTRUCTIONS[task], s.text, layout) for task, layout, s in cases]
    torch.manual_seed(0)
    responses = greedy_responses(model, tokenizer, prompts)
    assert responses == [language.response(task, s) for task, _, s in cases]
