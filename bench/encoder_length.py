"""Speech-path time (Whisper encoder + adapter) with encoder_padding="longest" against "max_length" (30 s).

Whisper-small shape with random weights; an LLM width of `--text_hidden_size` for the adapter's last layer. For each
clip length both modes run on the same batch in this process, and the script prints time ratios next to the ideal
ratio 30 s / clip length.

    python -m bench.encoder_length [--batch_size 4] [--repeats 3] [--device cpu]
"""

import argparse
import time

import numpy as np
import torch
from transformers import LlamaConfig, WhisperConfig, WhisperFeatureExtractor

from configuration_blsp import BlspConfig
from modeling_blsp import BlspForConditionalGeneration
from processing_blsp import BlspProcessor
from tests.helpers.tiny_models import build_tokenizer

CLIP_SECONDS = (4, 8, 12, 16)
WHISPER_SMALL = dict(d_model=768, encoder_layers=12, encoder_attention_heads=12, encoder_ffn_dim=3072)


def build_model(text_hidden_size: int, encoder_padding: str) -> BlspForConditionalGeneration:
    """Whisper-small encoder + adapter; an LLM with no layers (the speech path never runs it)."""
    torch.manual_seed(0)
    text_config = LlamaConfig(hidden_size=text_hidden_size, num_hidden_layers=0, vocab_size=512, num_attention_heads=32)
    config = BlspConfig(
        speech_config=WhisperConfig(**WHISPER_SMALL), text_config=text_config, encoder_padding=encoder_padding
    )
    return BlspForConditionalGeneration(config).eval()


def time_speech_path(model, inputs, repeats: int, device: str) -> float:
    """Best wall time of `repeats` calls of get_speech_features, after one warm-up call."""
    features, mask = inputs["input_features"].to(device), inputs["input_features_mask"].to(device)
    timings = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            start = time.perf_counter()
            model.get_speech_features(features, mask)
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            timings.append(time.perf_counter() - start)
    return min(timings[1:])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--text_hidden_size", type=int, default=4096)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = parser.parse_args()
    dtype = getattr(torch, args.dtype)
    modes = ("longest", "max_length")
    models = {mode: build_model(args.text_hidden_size, mode).to(args.device, dtype) for mode in modes}
    processor = BlspProcessor(WhisperFeatureExtractor(), build_tokenizer(chat=False))
    rng = np.random.default_rng(0)
    print(f"device={args.device} dtype={args.dtype} batch={args.batch_size} threads={torch.get_num_threads()}")
    print(f"{'clip':>6} {'longest s':>10} {'max_length s':>13} {'speed-up':>9} {'ideal':>7} {'of ideal':>9}")
    for seconds in CLIP_SECONDS:
        clips = [(0.1 * rng.standard_normal(seconds * 16000)).astype(np.float32) for _ in range(args.batch_size)]
        inputs, _ = processor.extract_features(clips)
        inputs["input_features"] = inputs["input_features"].to(dtype)
        longest = time_speech_path(models["longest"], inputs, args.repeats, args.device)
        padded = time_speech_path(models["max_length"], inputs, args.repeats, args.device)
        ideal = 30 / seconds
        speedup = padded / longest
        print(f"{seconds:>5}s {longest:>10.3f} {padded:>13.3f} {speedup:>8.2f}x {ideal:>6.2f}x {speedup / ideal:>8.2f}")


if __name__ == "__main__":
    main()
