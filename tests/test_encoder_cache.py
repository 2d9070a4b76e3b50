"""Step 2's stored encoder states (`--encoder_states_dir`): a run that reads them trains exactly as the run that
computed them, the stored states are the encoder's own for each clip alone, another encoder is refused, and masks act
on the states inside each clip."""

import json
import os
import shutil

import numpy as np
import pytest
import torch

import train_adapter
from blsp_steps.augmentation import AugmentationArguments, SpeechAugmentation
from blsp_steps.encoder_states import EncoderStateCache, clip_key, encoder_fingerprint
from modeling_blsp import BlspForConditionalGeneration
from processing_blsp import BlspProcessor

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def transcripts(speech_corpus, tmp_path_factory) -> str:
    """An audiofolder of 6 clips and their transcripts."""
    corpus_dir, rows = speech_corpus
    directory = str(tmp_path_factory.mktemp("transcripts"))
    with open(os.path.join(directory, "metadata.jsonl"), "w", encoding="utf-8") as file:
        for row in rows[:6]:
            shutil.copy(os.path.join(corpus_dir, row["file_name"]), directory)
            file.write(json.dumps({"file_name": row["file_name"], "text": row["text"]}) + "\n")
    return directory


def train(initial_blsp: str, dataset: str, output_dir: str, *extra: str) -> dict:
    flags = {
        "model_name_or_path": initial_blsp,
        "dataset_name": dataset,
        "output_dir": output_dir,
        "loss": "ctc",
        "max_steps": 3,
        "per_device_train_batch_size": 3,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": "none",
        "use_cpu": True,
        "seed": 0,
        "disable_tqdm": True,
    }
    train_adapter.main([item for key, value in flags.items() for item in (f"--{key}", str(value))] + list(extra))
    with open(os.path.join(output_dir, "trainer_state.json")) as file:
        losses = [entry["loss"] for entry in json.load(file)["log_history"] if "loss" in entry]
    with open(os.path.join(output_dir, "train_results.json")) as file:
        return {"losses": losses, **json.load(file)}


def test_read_states_train_as_the_computed_ones_and_are_the_encoders_own(initial_blsp, transcripts, tmp_path):
    states_dir = str(tmp_path / "states")
    masks = ["--num_time_masks", "2", "--max_time_mask_frames", "20"]
    computed = train(initial_blsp, transcripts, str(tmp_path / "first"), "--encoder_states_dir", states_dir, *masks)
    read = train(initial_blsp, transcripts, str(tmp_path / "second"), "--encoder_states_dir", states_dir, *masks)
    assert computed["encoder_states_computed"] == 6 and computed["encoder_states_read"] == 3  # 9 clips, 6 distinct
    assert read["encoder_states_computed"] == 0 and read["encoder_states_read"] == 9
    assert read["losses"] == computed["losses"]

    model = BlspForConditionalGeneration.from_pretrained(initial_blsp).eval()
    processor = BlspProcessor.from_pretrained(initial_blsp)
    for name in sorted(os.listdir(transcripts))[:3]:
        if not name.endswith(".flac"):
            continue
        clip = processor.load_audio(os.path.join(transcripts, name))
        inputs = processor(text=[processor.render_prompt("Repeat.")], audio=[clip])
        with torch.no_grad():
            alone, length = model.encode_speech(inputs["input_features"], inputs["input_features_mask"])
        stored = np.load(os.path.join(states_dir, clip_key(clip)[:2], f"{clip_key(clip)}.npy"))
        assert stored.dtype == np.float16 and stored.shape == (int(length), alone.shape[-1])
        torch.testing.assert_close(torch.from_numpy(stored).float(), alone[0, : int(length)], atol=2e-3, rtol=2e-3)


def test_another_encoder_is_refused(initial_blsp, tmp_path):
    model = BlspForConditionalGeneration.from_pretrained(initial_blsp)
    feature_extractor = BlspProcessor.from_pretrained(initial_blsp).feature_extractor
    EncoderStateCache(str(tmp_path), encoder_fingerprint(model, feature_extractor))
    EncoderStateCache(str(tmp_path), encoder_fingerprint(model, feature_extractor))  # the same encoder: accepted
    with torch.no_grad():
        model.speech_encoder.layers[0].fc1.weight[0, 0] += 1e-3
    with pytest.raises(ValueError, match="another speech encoder.*encoder_sha256"):
        EncoderStateCache(str(tmp_path), encoder_fingerprint(model, feature_extractor))
    model.config.encoder_padding = "max_length"
    with pytest.raises(ValueError, match="encoder_padding"):
        EncoderStateCache(str(tmp_path), encoder_fingerprint(model, feature_extractor))


def test_a_training_encoder_and_frequency_masks_are_refused(initial_blsp, transcripts, tmp_path):
    cache = ["--encoder_states_dir", str(tmp_path / "states")]
    with pytest.raises(ValueError, match="encoder cannot train"):
        train(initial_blsp, transcripts, str(tmp_path / "a"), *cache, "--train_speech_encoder_top_layers", "1")
    with pytest.raises(ValueError, match="frequency masks"):
        train(initial_blsp, transcripts, str(tmp_path / "b"), *cache, "--num_frequency_masks", "2")


def test_time_masks_on_states_stay_inside_each_clip():
    augmentation = SpeechAugmentation(AugmentationArguments(num_time_masks=3, max_time_mask_frames=8), 16000)
    states = torch.randn(2, 10, 4)
    states[1, 6:] = 0.0
    masked = augmentation.state_masks(states, torch.tensor([10, 6]))
    assert not masked[1, 6:].any()
    changed = (masked != states).any(-1)
    assert changed.any() and torch.equal(masked[:, :, 0] == states[:, :, 0], ~changed)
