"""Step 2's speech augmentation (`blsp_steps.augmentation`): what each transform does to a clip, that masks stay
inside the clip, and that only training batches are augmented."""

import os

import numpy as np
import pytest
import torch

import train_adapter
from blsp_steps.augmentation import AugmentationArguments, SpeechAugmentation, speech_bounds
from blsp_steps.training import BlspTrainer, SpeechPromptCollator
from processing_blsp import BlspProcessor

RATE = 16000
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tone(frequencies: tuple[float, ...], seconds: float = 1.0) -> np.ndarray:
    time = np.arange(int(RATE * seconds)) / RATE
    return sum(np.sin(2 * np.pi * frequency * time) for frequency in frequencies).astype(np.float32) / 4


def energy_above(clip: np.ndarray, frequency: float) -> float:
    spectrum = np.abs(np.fft.rfft(clip)) ** 2
    return float(spectrum[np.fft.rfftfreq(len(clip), 1 / RATE) > frequency].sum() / spectrum.sum())


def test_speed_perturbation_changes_length_and_pitch_together():
    augmentation = SpeechAugmentation(AugmentationArguments(speed_perturbation=[1.25]), RATE)
    clip = augmentation.waveform(tone((1000.0,)))
    assert len(clip) == pytest.approx(RATE / 1.25, abs=2)
    peak = np.fft.rfftfreq(len(clip), 1 / RATE)[np.abs(np.fft.rfft(clip)).argmax()]
    assert peak == pytest.approx(1250.0, abs=5)


def test_telephone_band_keeps_nothing_above_4_khz():
    clip = tone((1000.0, 6000.0))
    assert energy_above(clip, 4100) == pytest.approx(0.5, abs=0.01)
    narrow = SpeechAugmentation(AugmentationArguments(telephone_band_probability=1.0), RATE).waveform(clip)
    assert len(narrow) == len(clip) and energy_above(narrow, 4100) < 1e-4
    assert energy_above(narrow, 900) > 0.99  # the 1 kHz tone is kept


def test_masks_stay_inside_each_clip_and_repeat_with_the_seed():
    args = AugmentationArguments(num_time_masks=2, max_time_mask_frames=30, num_frequency_masks=2)
    features = torch.randn(2, 80, 300)
    mask = torch.zeros(2, 300, dtype=torch.long)
    mask[0, :300], mask[1, :120] = 1, 1
    masked = SpeechAugmentation(args, RATE, seed=3).features(features, mask)
    assert torch.equal(masked, SpeechAugmentation(args, RATE, seed=3).features(features, mask))
    assert not torch.equal(masked, SpeechAugmentation(args, RATE, seed=4).features(features, mask))
    assert torch.equal(masked[1, :, 120:], features[1, :, 120:])  # padding untouched
    changed = (masked != features).any(1)  # frames with a masked bin
    assert changed[0].sum() > 0 and changed[1, :120].sum() > 0


def test_cut_edges_keep_the_speech_and_at_most_the_drawn_margin_of_the_noise_around_it():
    rng = np.random.default_rng(0)
    speech = tone((300.0, 1200.0))
    clip = np.concatenate([np.zeros(8000), speech, np.zeros(12000)]).astype(np.float32)
    clip += 0.003 * rng.standard_normal(len(clip)).astype(np.float32)  # noise 34 dB under the speech
    assert speech_bounds(clip, RATE) == (8000, 24000)
    tight = SpeechAugmentation(AugmentationArguments(edge_trim_probability=1.0, max_edge_margin_seconds=0.0), RATE)
    assert np.array_equal(tight.waveform(clip), clip[8000:24000])
    args = AugmentationArguments(edge_trim_probability=1.0, max_edge_margin_seconds=0.1)
    lengths = {len(SpeechAugmentation(args, RATE, seed=seed).waveform(clip)) for seed in range(20)}
    assert min(lengths) >= 16000 and max(lengths) <= 16000 + 3200 and len(lengths) > 10
    assert speech_bounds(np.zeros(100, dtype=np.float32), RATE) == (0, 100)  # too short to tell
    untouched = SpeechAugmentation(
        AugmentationArguments(edge_trim_probability=0.0, telephone_band_probability=0.0), RATE
    )
    assert np.array_equal(untouched.waveform(clip), clip)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="speed_perturbation"):
        AugmentationArguments(speed_perturbation=[0.0, 1.0])
    with pytest.raises(ValueError, match="telephone_band_probability"):
        AugmentationArguments(telephone_band_probability=1.5)
    with pytest.raises(ValueError, match="edge_trim_probability"):
        AugmentationArguments(edge_trim_probability=-0.1)
    assert not AugmentationArguments().enabled


def test_training_batches_are_augmented_and_evaluation_batches_are_not(initial_blsp, speech_corpus, tmp_path):
    corpus_dir, rows = speech_corpus
    processor = BlspProcessor.from_pretrained(initial_blsp)
    records = [
        {"audio": {"path": os.path.join(corpus_dir, row["file_name"]), "bytes": None}, "text": row["text"]}
        for row in rows[:2]
    ]
    records = [{**record, "instruction": "Repeat the text."} for record in records]
    plain = SpeechPromptCollator(processor, with_teacher=False)
    args = AugmentationArguments(speed_perturbation=[1.25], num_time_masks=2)
    augmented = SpeechPromptCollator(processor, with_teacher=False, augmentation=SpeechAugmentation(args, RATE))
    assert augmented(records)["input_features_mask"].sum() < plain(records)["input_features_mask"].sum()

    _, _, training_args, _ = train_adapter.parse_arguments(
        ["--model_name_or_path", initial_blsp, "--dataset_name", "unused", "--output_dir", str(tmp_path)]
        + ["--train_sampling_strategy", "sequential"]
    )
    trainer = BlspTrainer(
        model=torch.nn.Linear(1, 1), args=training_args, data_collator=augmented, processing_class=processor
    )
    evaluation = trainer.get_eval_dataloader(records)
    assert evaluation.collate_fn.augmentation is None and trainer.data_collator is augmented
