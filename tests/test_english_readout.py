"""english.readout: the words the adapter hands the LLM are the top tokens of the frames CTC compression keeps."""

import numpy as np
import torch

import english.readout
import modeling_blsp
from english.readout import read_out
from modeling_blsp import BlspForConditionalGeneration
from processing_blsp import BlspProcessor


def test_readout_decodes_the_kept_frames_and_the_frame_kept_of_an_all_blank_clip(saved_blsp, monkeypatch):
    """Two clips of one length: the first read as an untrained adapter reads it (never the blank), the second as all
    blanks, whose one kept frame is read as its top token (it crashed the readout, decoding the blank as -1)."""
    model = BlspForConditionalGeneration.from_pretrained(saved_blsp["qwen2"]).eval()
    processor = BlspProcessor.from_pretrained(saved_blsp["qwen2"])
    monkeypatch.setattr(model.config, "speech_compression", "ctc")
    readout = modeling_blsp.ctc_readout

    def second_half_blank(speech_embeds, embeddings):
        logits = readout(speech_embeds, embeddings)
        blank = torch.full_like(logits[:, :1], -1e4)
        blank[len(blank) // 2 :] = 1e4
        return torch.cat([blank, logits[:, 1:]], dim=-1)

    rng = np.random.default_rng(0)
    clips = [(0.1 * rng.standard_normal(32000)).astype(np.float32) for _ in range(2)]
    inputs = processor(text=processor.render_prompt(""), audio=clips[0])
    with torch.no_grad():
        frames = model.get_speech_features(inputs["input_features"], inputs["input_features_mask"])
    tokens = readout(frames, model.get_input_embeddings().weight)[:, 1:].argmax(-1)
    kept = torch.cat([torch.ones(1, dtype=torch.bool), tokens[1:] != tokens[:-1]])
    expected = processor.tokenizer.decode(tokens[kept]).strip()

    monkeypatch.setattr(modeling_blsp, "ctc_readout", second_half_blank)
    monkeypatch.setattr(english.readout, "ctc_readout", second_half_blank)
    speech_text, blank_text = read_out(model, processor, clips)
    assert speech_text == expected != ""
    assert blank_text != "" and len(processor.tokenizer(blank_text, add_special_tokens=False)["input_ids"]) <= 2
