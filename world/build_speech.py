"""Speak the toy language with two synthesizers, as if recorded: an audiofolder per split (16 kHz mono 8-bit FLAC).

    python -m world.build_speech --output_dir world/data/speech

- `train`: train sentences in training voices and speeds;
- `test_seen_voice`: held-out sentences in training voices and speeds;
- `test_heldout_voice`: the same held-out sentences in an espeak-ng voice no training clip comes near: an accent
  (`en-gb-scotland`), a voice variant (`f2`) and a speed (170 wpm) that no training clip uses;
- `test_heldout_festival_voice`: the same held-out sentences in festival's `ked_diphone`, a voice of the second
  synthesizer that no training clip uses.

Training voices are espeak-ng accent + variant pairs and two festival voices (`kal_diphone`, `cmu_us_slt_arctic_hts`),
a quarter of the clips from festival. Every shipped clip is "recorded": the synthesizer's speech, trimmed, gets
random leading and trailing silence, a random level and white, pink or brown background noise at a random
signal-to-noise ratio (`RECORDING`), so no clip starts or ends where the speech does. Each `metadata.jsonl` row holds
`file_name`, `text`, `synthesizer`, `voice`, `speed` (words per minute), `sentence_id` (see `world.language`) and the
drawn recording conditions. The speech model's pretraining corpus (`pretraining_plan`) is written clean (trimmed,
peak-normalised); `world.pretrain_speech` draws fresh recording conditions every time it reads a clip.
"""

import argparse
import io
import json
import os
import random
import shutil
import subprocess
import tempfile
from collections import defaultdict

import numpy as np
import soundfile
import soxr

from world.language import Sentence, sentences_by_template, split_sentences

SAMPLING_RATE = 16000
ESPEAK, FESTIVAL, FLITE = "espeak-ng", "festival", "flite"
TRAIN_ACCENTS = (
    "en-us", "en-gb", "en-gb-x-gbclan", "en-gb-x-rp", "en-gb-x-gbcwmd", "en-029", "en-us-nyc",
)  # fmt: skip
TRAIN_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "Alex", "Andy", "Gene", "Mike", "Storm", "Diogo", "Hugo",
    "antonio", "david", "ed", "edward", "grandpa", "iven", "john", "klatt", "klatt2", "klatt3", "max", "michel", "paul",
    "pedro", "quincy", "rob", "robert", "sandro", "travis", "victor",
    "f1", "f3", "f4", "f5", "Alicia", "Andrea", "Annie", "anika", "aunty", "belinda", "grandma", "linda", "shelby",
    "steph",
)  # fmt: skip
FESTIVAL_TRAIN_VOICES = ("kal_diphone", "cmu_us_slt_arctic_hts")
FESTIVAL_SHARE = 0.25
"""Fraction of training clips spoken by festival rather than espeak-ng."""
FESTIVAL_NATIVE_WPM = 180
"""festival's own speaking rate, roughly: a speed of `s` words per minute stretches durations by this / `s`."""
FLITE_NATIVE_WPM = 180
"""flite's own rate, the same way (its voices speak about as fast as festival's)."""
TRAIN_SPEEDS = (120, 130, 140, 150, 160, 180, 190, 200)
HELD_OUT_VOICE, HELD_OUT_SPEED = "en-gb-scotland+f2", 170
HELD_OUT_FESTIVAL_VOICE = "ked_diphone"
TEST_SPLITS = ("test_seen_voice", "test_heldout_voice", "test_heldout_festival_voice")
SILENCE_THRESHOLD = 0.02
"""Fraction of the peak amplitude below which leading and trailing samples count as silence."""
SILENCE_MARGIN_SECONDS = 0.08
PEAK_LEVEL = 0.9
RECORDING = {
    "leading_silence": (0.05, 1.2),
    "trailing_silence": (0.05, 1.2),
    "peak_dbfs": (-18.0, -1.0),
    "snr_db": (10.0, 35.0),
}
"""Uniform ranges of the drawn recording conditions: seconds of silence, peak level and speech-to-noise ratio."""
NOISE_EXPONENTS = {"white": 0.0, "pink": 1.0, "brown": 2.0}
"""Noise colours by the exponent of their power spectrum's 1/f falloff."""


def training_voices() -> list[tuple[str, str]]:
    """Every (synthesizer, voice) pair used for training clips: espeak-ng accent + variant names, festival voices."""
    espeak = [(ESPEAK, f"{accent}+{variant}") for accent in TRAIN_ACCENTS for variant in TRAIN_VARIANTS]
    return espeak + [(FESTIVAL, voice) for voice in FESTIVAL_TRAIN_VOICES]


def pick_training_voice(rng: random.Random) -> tuple[str, str]:
    """A training (synthesizer, voice): festival with probability `FESTIVAL_SHARE`, else an espeak-ng voice."""
    synthesizer = FESTIVAL if rng.random() < FESTIVAL_SHARE else ESPEAK
    return rng.choice([pair for pair in training_voices() if pair[0] == synthesizer])


def speak_espeak(text: str, voice: str, speed: int) -> np.ndarray:
    """espeak-ng's rendering of `text` as float32 mono samples at 16 kHz."""
    command = ["espeak-ng", "-v", voice, "-s", str(speed), "--stdout"]  # text on stdin: "-ism" is no option
    wav = subprocess.run(command, input=text.encode(), check=True, capture_output=True).stdout
    return read_resampled(io.BytesIO(wav))


def speak_flite(text: str, voice: str, speed: int) -> np.ndarray:
    """flite's rendering of `text` (`apt-get install flite`; voices awb, rms, slt, kal16) as float32 mono at 16 kHz."""
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "speech.wav")
        stretch = f"duration_stretch={FLITE_NATIVE_WPM / speed:.4f}"
        subprocess.run(["flite", "-voice", voice, "--setf", stretch, "-t", text, "-o", path], check=True)
        return read_resampled(path)


def speak_festival(rows: list[dict]) -> list[np.ndarray]:
    """festival's renderings of the rows (one festival process for all of them), as float32 mono at 16 kHz."""
    with tempfile.TemporaryDirectory() as scratch:
        commands = []
        for index, row in enumerate(rows):
            stretch = FESTIVAL_NATIVE_WPM / row["speed"]
            commands += [
                f"(voice_{row['voice']})",
                f"(Parameter.set 'Duration_Stretch {stretch:.4f})",
                f'(utt.save.wave (utt.synth (Utterance Text "{row["text"]}")) "{scratch}/{index}.wav" \'riff)',
            ]
        script = os.path.join(scratch, "speak.scm")
        with open(script, "w") as file:
            file.write("\n".join(commands) + "\n")
        subprocess.run(["festival", "-b", script], check=True, capture_output=True)
        return [read_resampled(os.path.join(scratch, f"{index}.wav")) for index in range(len(rows))]


def read_resampled(source) -> np.ndarray:
    samples, rate = soundfile.read(source, dtype="float32")
    return soxr.resample(samples, rate, SAMPLING_RATE).astype(np.float32)


def speak_rows(rows: list[dict]) -> list[np.ndarray]:
    """The synthesizer's speech for every row, trimmed to the speech plus a short margin, in row order."""
    speech = [None] * len(rows)
    festival_rows = [index for index, row in enumerate(rows) if row["synthesizer"] == FESTIVAL]
    for index, samples in zip(festival_rows, speak_festival([rows[index] for index in festival_rows])):
        speech[index] = samples
    for index, row in enumerate(rows):
        if row["synthesizer"] == ESPEAK:
            speech[index] = speak_espeak(row["text"], row["voice"], row["speed"])
        elif row["synthesizer"] == FLITE:
            speech[index] = speak_flite(row["text"], row["voice"], row["speed"])
    return [trim(samples) for samples in speech]


def trim(samples: np.ndarray) -> np.ndarray:
    """Cut leading and trailing silence, keeping a short margin."""
    loud = np.flatnonzero(np.abs(samples) > SILENCE_THRESHOLD * np.abs(samples).max())
    margin = int(SILENCE_MARGIN_SECONDS * SAMPLING_RATE)
    return samples[max(0, loud[0] - margin) : min(len(samples), loud[-1] + margin)]


def draw_recording(rng: random.Random) -> dict:
    """Random recording conditions: silences, peak level, SNR (each uniform in `RECORDING`) and a noise colour."""
    conditions = {name: round(rng.uniform(low, high), 3) for name, (low, high) in RECORDING.items()}
    return {**conditions, "noise": rng.choice(sorted(NOISE_EXPONENTS))}


def colored_noise(length: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-RMS noise whose power spectrum falls as 1/f**exponent (white 0, pink 1, brown 2).

    It is shaped over the next power of two (a fast FFT size) and cut to `length`.
    """
    size = 1 << (length - 1).bit_length()
    frequencies = np.fft.rfftfreq(size)
    frequencies[0] = frequencies[1]
    noise = np.fft.irfft(np.fft.rfft(rng.standard_normal(size)) / frequencies ** (exponent / 2), size)[:length]
    return noise / np.sqrt(np.mean(noise**2))


def recorded_silences(conditions: dict) -> tuple[int, int]:
    """The samples of silence `record` puts before and after the speech under these drawn conditions."""
    return tuple(int(conditions[name] * SAMPLING_RATE) for name in ("leading_silence", "trailing_silence"))


def record(speech: np.ndarray, conditions: dict, rng: np.random.Generator) -> np.ndarray:
    """The trimmed speech between silences, under background noise at the drawn SNR, scaled to the drawn peak."""
    lead, tail = recorded_silences(conditions)
    signal = np.concatenate([np.zeros(lead), speech, np.zeros(tail)])
    speech_rms = np.sqrt(np.mean(speech**2))
    noise_rms = speech_rms / 10 ** (conditions["snr_db"] / 20)
    recording = signal + noise_rms * colored_noise(len(signal), NOISE_EXPONENTS[conditions["noise"]], rng)
    peak = 10 ** (conditions["peak_dbfs"] / 20)
    return (recording * (peak / np.abs(recording).max())).astype(np.float32)


def cut_silence(clip: np.ndarray, conditions: dict) -> np.ndarray:
    """A recorded clip without the silence `record` put before and after its speech (the speech's own margins kept)."""
    lead, tail = recorded_silences(conditions)
    return clip[lead : len(clip) - tail]


def pick_sentences(sentences: list[Sentence], count: int, rng: random.Random) -> list[Sentence]:
    """`count` distinct sentences, taken in turn from each template so that rare templates are all represented."""
    by_template = defaultdict(list)
    for sentence in sentences:
        by_template[sentence.template].append(sentence)
    queues = [rng.sample(group, len(group)) for group in by_template.values()]
    picked = []
    while len(picked) < count and any(queues):
        picked.extend(queue.pop() for queue in queues if queue)
    if len(picked) < count:
        raise ValueError(f"asked for {count} sentences but only {len(sentences)} exist")
    return picked[:count]


def clip_plan(num_train: int, num_test: int, seed: int) -> dict[str, list[dict]]:
    """For every split, the metadata rows of its clips (voice, speed, sentence and recording conditions)."""
    rng = random.Random(seed)
    train = pick_sentences(split_sentences("train"), num_train, rng)
    test = pick_sentences(split_sentences("held_out"), num_test, rng)
    plans = {
        "train": [(sentence, *pick_training_voice(rng), rng.choice(TRAIN_SPEEDS)) for sentence in train],
        "test_seen_voice": [(sentence, *pick_training_voice(rng), rng.choice(TRAIN_SPEEDS)) for sentence in test],
        "test_heldout_voice": [(sentence, ESPEAK, HELD_OUT_VOICE, HELD_OUT_SPEED) for sentence in test],
        "test_heldout_festival_voice": [
            (sentence, FESTIVAL, HELD_OUT_FESTIVAL_VOICE, rng.choice(TRAIN_SPEEDS)) for sentence in test
        ],
    }
    return {
        split: [{**clip_row(index, *clip), **draw_recording(rng)} for index, clip in enumerate(plan)]
        for split, plan in plans.items()
    }


def clip_row(index: int, sentence: Sentence, synthesizer: str, voice: str, speed: int) -> dict:
    """The metadata row of one clip."""
    return {
        "file_name": f"{index:04d}.flac",
        "text": sentence.text,
        "synthesizer": synthesizer,
        "voice": voice,
        "speed": speed,
        "sentence_id": sentence.sentence_id,
    }


def pretraining_plan(num_clips: int, seed: int) -> list[dict]:
    """Rows of a clean speech-pretraining corpus: random train sentences (templates uniform) in training voices."""
    rng = random.Random(seed)
    by_template = sentences_by_template("train")
    rows = []
    for index in range(num_clips):
        sentence = rng.choice(by_template[rng.choice(sorted(by_template))])
        rows.append(clip_row(index, sentence, *pick_training_voice(rng), rng.choice(TRAIN_SPEEDS)))
    return rows


def write_split(directory: str, rows: list[dict], seed: tuple[int, ...] = (0,)):
    """Speak every row into `directory` and write its `metadata.jsonl`.

    Rows with recording conditions are recorded under them (noise drawn from `seed` and the row's position); rows
    without are written clean, peak-normalised.
    """
    os.makedirs(directory, exist_ok=True)
    for index, (row, speech) in enumerate(zip(rows, speak_rows(rows))):
        if "snr_db" in row:
            samples = record(speech, row, np.random.default_rng([*seed, index]))
        else:
            samples = speech * (PEAK_LEVEL / np.abs(speech).max())
        soundfile.write(os.path.join(directory, row["file_name"]), samples, SAMPLING_RATE, subtype="PCM_S8")
    with open(os.path.join(directory, "metadata.jsonl"), "w") as file:
        file.writelines(json.dumps(row) + "\n" for row in rows)


def build_speech(output_dir: str, num_train: int = 1000, num_test: int = 150, seed: int = 0) -> dict[str, list[dict]]:
    """Write every split under `output_dir` (replacing what was there); returns the rows of each split."""
    shutil.rmtree(output_dir, ignore_errors=True)
    plan = clip_plan(num_train, num_test, seed)
    for position, (split, rows) in enumerate(plan.items()):
        write_split(os.path.join(output_dir, split), rows, (seed, position))
    return plan


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="world/data/speech")
    parser.add_argument("--num_train", type=int, default=1000, help="Training clips (distinct train sentences).")
    parser.add_argument("--num_test", type=int, default=150, help="Held-out sentences, spoken once per test split.")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    plan = build_speech(args.output_dir, args.num_train, args.num_test, args.seed)
    print({split: len(rows) for split, rows in plan.items()})


if __name__ == "__main__":
    main()
