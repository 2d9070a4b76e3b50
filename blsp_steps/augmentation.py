"""Training-time speech augmentation for step 2: edges cut tight, speed perturbation and telephone band on the
waveform (soxr), SpecAugment-style time and frequency masks on the log-mel features. Only the training collator
applies it.

Cutting the edges keeps a drawn 0 to `max_edge_margin_seconds` of the silence before and after the speech (found by
frame energy), as people's recorded prompts are often cut: an adapter that has only heard clips with silence around
the speech loses their first and last words.

Speed perturbation (Ko et al., 2015) resamples a clip as if it had been recorded at `factor` times the rate: tempo
and pitch change together, so every clip also stands for a new speaker. The telephone band resamples the clip to 8 kHz
and back (nothing above 4 kHz survives), as in telephone recordings. SpecAugment (Park et al., 2019) replaces random
spans of frames and of mel bins with the clip's mean feature value.
"""

from dataclasses import dataclass, field

import numpy as np
import soxr
import torch

TELEPHONE_RATE = 8000
EDGE_FRAME_SECONDS = 0.02


@dataclass
class AugmentationArguments:
    """Speech augmentation of step 2's training batches (none by default)."""

    edge_trim_probability: float = field(
        default=0.0,
        metadata={
            "help": "Chance that a clip's silence before and after its speech is cut to a drawn 0 to "
            "--max_edge_margin_seconds on each side (speech found by frame energy): clips as tight at the speech as "
            "people's recorded prompts often are."
        },
    )
    max_edge_margin_seconds: float = field(
        default=0.1, metadata={"help": "The most silence a cut edge keeps before or after the speech, in seconds."}
    )
    speed_perturbation: list[float] = field(
        default_factory=list,
        metadata={"help": "Speed factors drawn per clip, e.g. 0.9 1.0 1.1 (tempo and pitch change together)."},
    )
    telephone_band_probability: float = field(
        default=0.0, metadata={"help": "Chance that a clip is resampled to 8 kHz and back (telephone band)."}
    )
    num_time_masks: int = field(default=0, metadata={"help": "SpecAugment: time masks per clip."})
    max_time_mask_frames: int = field(default=30, metadata={"help": "SpecAugment: widest time mask (10 ms frames)."})
    num_frequency_masks: int = field(default=0, metadata={"help": "SpecAugment: frequency masks per clip."})
    max_frequency_mask_bins: int = field(default=15, metadata={"help": "SpecAugment: widest frequency mask (bins)."})

    def __post_init__(self):
        if any(factor <= 0 for factor in self.speed_perturbation):
            raise ValueError(f"--speed_perturbation factors must be positive, got {self.speed_perturbation}.")
        if not 0.0 <= self.edge_trim_probability <= 1.0:
            raise ValueError(f"--edge_trim_probability must be in [0, 1], got {self.edge_trim_probability}.")
        if self.max_edge_margin_seconds < 0:
            raise ValueError(f"--max_edge_margin_seconds must be at least 0, got {self.max_edge_margin_seconds}.")
        if not 0.0 <= self.telephone_band_probability <= 1.0:
            raise ValueError(f"--telephone_band_probability must be in [0, 1], got {self.telephone_band_probability}.")
        if min(self.num_time_masks, self.max_time_mask_frames, self.num_frequency_masks) < 0:
            raise ValueError("SpecAugment's mask counts and widths must be at least 0.")

    @property
    def enabled(self) -> bool:
        return bool(
            self.edge_trim_probability or self.speed_perturbation or self.telephone_band_probability or self.masks
        )

    @property
    def masks(self) -> bool:
        return bool(self.num_time_masks and self.max_time_mask_frames) or bool(
            self.num_frequency_masks and self.max_frequency_mask_bins
        )


def telephone_band(clip: np.ndarray, sampling_rate: int) -> np.ndarray:
    """The clip resampled to 8 kHz and back: nothing above 4 kHz survives, as in telephone recordings."""
    return soxr.resample(soxr.resample(clip, sampling_rate, TELEPHONE_RATE), TELEPHONE_RATE, sampling_rate)


def speech_bounds(clip: np.ndarray, sampling_rate: int) -> tuple[int, int]:
    """The start and end (samples) of the clip's speech: from the first to the last 20 ms frame whose energy is 10 dB
    above the clip's quietest tenth of frames (its noise floor) and within 40 dB of its loudest; the whole clip when
    it is too short to tell."""
    size = int(EDGE_FRAME_SECONDS * sampling_rate)
    count = len(clip) // size
    if count < 2:
        return 0, len(clip)
    frames = clip[: count * size].astype(np.float64).reshape(count, size)
    energy = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-12)
    loud = np.flatnonzero(energy > max(np.percentile(energy, 10) + 10, energy.max() - 40))
    if not len(loud):
        return 0, len(clip)
    return int(loud[0] * size), int(min(len(clip), (loud[-1] + 1) * size))


class SpeechAugmentation:
    """Draws each clip's augmentation from its own generator (`seed`), in the collator's process."""

    def __init__(self, args: AugmentationArguments, sampling_rate: int, seed: int = 0):
        self.args, self.sampling_rate = args, sampling_rate
        self.rng = np.random.default_rng(seed)

    def waveform(self, clip: np.ndarray) -> np.ndarray:
        """The clip, its edges cut tight, sped up or slowed down by a drawn factor and band-limited to 4 kHz, each
        with its set chance."""
        if self.args.edge_trim_probability and self.rng.random() < self.args.edge_trim_probability:
            start, end = speech_bounds(clip, self.sampling_rate)
            lead, tail = (self.rng.uniform(0, self.args.max_edge_margin_seconds) for _ in range(2))
            clip = clip[max(0, start - int(lead * self.sampling_rate)) : end + int(tail * self.sampling_rate)]
        if self.args.speed_perturbation:
            factor = float(self.rng.choice(self.args.speed_perturbation))
            if factor != 1.0:
                clip = soxr.resample(clip, self.sampling_rate * factor, self.sampling_rate)
        if self.rng.random() < self.args.telephone_band_probability:
            clip = telephone_band(clip, self.sampling_rate)
        return clip.astype(np.float32)

    def state_masks(self, states: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(batch, frames, hidden) encoder states (cached ones) with SpecAugment's time masks inside each clip's
        valid frames, half as wide as on the features (one encoder frame is two feature frames). Frequency masks
        have no counterpart on the states (`--encoder_states_dir` refuses them)."""
        if not (self.args.num_time_masks and self.args.max_time_mask_frames):
            return states
        states = states.clone()
        for row, length in enumerate(lengths.tolist()):
            mean = states[row, :length].mean(0)
            for _ in range(self.args.num_time_masks):
                states[row, self.span(self.args.max_time_mask_frames // 2, length)] = mean
        return states

    def span(self, widest: int, size: int) -> slice:
        """A mask's positions: a drawn width of 0 to `widest` (at most `size`), at a drawn start inside `size`."""
        width = int(self.rng.integers(0, min(widest, size) + 1))
        start = int(self.rng.integers(0, size - width + 1))
        return slice(start, start + width)

    def features(self, features: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(batch, mel, frames) features with SpecAugment's masks inside each clip's valid frames (`mask`)."""
        if not self.args.masks:
            return features
        features = features.clone()
        for row, length in enumerate(mask.sum(-1).tolist()):
            mean = features[row, :, :length].mean()
            spans = [(self.args.num_time_masks, self.args.max_time_mask_frames, length, 2)]
            spans.append((self.args.num_frequency_masks, self.args.max_frequency_mask_bins, features.shape[1], 1))
            for count, widest, size, axis in spans:
                for _ in range(count):
                    if axis == 2:
                        features[row, :, self.span(widest, size)] = mean
                    else:
                        features[row, self.span(widest, size), :length] = mean
        return features
