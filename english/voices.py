"""Who speaks a corpus split's clips: draws of (synthesizer, voice, speed) from a generator, one function per mixture
of voices (`english.build_corpus` gives each split one)."""

import random

from english.kokoro import KOKORO
from english.kokoro import VOICES as KOKORO_VOICES
from world.build_speech import FLITE, TRAIN_SPEEDS, pick_training_voice

SHORT_PIPER_SHARE = 0.25
"""The share of `train_short`'s and `train_phrases`' clips spoken in Piper's voice."""
PIPER = "piper"
PIPER_VOICE = "en_US-joe-medium"
FLITE_VOICES = ("awb", "rms", "slt")
"""flite's statistical voices, each made from one person's recordings (CMU ARCTIC: a Scottish and an American man, an
American woman; slt is also festival's training voice `cmu_us_slt_arctic_hts`)."""


def training_voice(rng: random.Random):
    """Draws of (synthesizer, voice, speed) among the training voices, from `rng`."""
    return lambda: (*pick_training_voice(rng), rng.choice(TRAIN_SPEEDS))


def piper_voice(rng: random.Random):
    """Draws of (synthesizer, voice, speed) in Piper's voice, from `rng`."""
    return lambda: (PIPER, PIPER_VOICE, rng.choice(TRAIN_SPEEDS))


def flite_voice(rng: random.Random):
    """Draws of (synthesizer, voice, speed) among flite's voices, from `rng`."""
    return lambda: (FLITE, rng.choice(FLITE_VOICES), rng.choice(TRAIN_SPEEDS))


def kokoro_voice(rng: random.Random):
    """Draws of (synthesizer, voice, speed) among Kokoro's English voices, from `rng`."""
    return lambda: (KOKORO, rng.choice(KOKORO_VOICES), rng.choice(TRAIN_SPEEDS))


def mixed_voice(rng: random.Random):
    """Draws among the training voices and, in `SHORT_PIPER_SHARE` of them, Piper's, from `rng`."""
    piper, training = piper_voice(rng), training_voice(rng)
    return lambda: piper() if rng.random() < SHORT_PIPER_SHARE else training()


def half_kokoro_voice(rng: random.Random):
    """Draws among Kokoro's voices in half of them, else `mixed_voice`'s, from `rng`."""
    kokoro, mixed = kokoro_voice(rng), mixed_voice(rng)
    return lambda: kokoro() if rng.random() < 0.5 else mixed()
