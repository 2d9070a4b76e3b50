"""The adapter's self-attention layers (`adapter_num_transformer_layers`): added to a trained adapter they start as
the identity, a clip's speech embeddings do not depend on its batch, and they survive a save and a load."""

import pytest
import torch

from modeling_blsp import BlspForConditionalGeneration
from processing_blsp import BlspProcessor

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def speech_embeddings(model, processor, clips) -> torch.Tensor:
    inputs = processor(text=[processor.render_prompt("Repeat.")] * len(clips), audio=clips)
    with torch.no_grad():
        return model.get_speech_features(inputs["input_features"], inputs["input_features_mask"])


@pytest.fixture
def clips(speech_corpus):
    corpus_dir, rows = speech_corpus
    return [f"{corpus_dir}/{row['file_name']}" for row in rows[:3]]


def test_layers_added_to_a_trained_adapter_start_as_the_identity(initial_blsp, clips):
    processor = BlspProcessor.from_pretrained(initial_blsp)
    before = BlspForConditionalGeneration.from_pretrained(initial_blsp).eval()
    after = BlspForConditionalGeneration.from_pretrained(initial_blsp, adapter_num_transformer_layers=2).eval()
    assert len(after.adapter.layers) == 2
    for layer in after.adapter.layers:
        assert not layer.out_proj.weight.any() and not layer.fc2.weight.any()
    torch.testing.assert_close(speech_embeddings(after, processor, clips), speech_embeddings(before, processor, clips))


def test_attention_keeps_clips_apart_and_round_trips(initial_blsp, clips, tmp_path):
    processor = BlspProcessor.from_pretrained(initial_blsp)
    model = BlspForConditionalGeneration.from_pretrained(initial_blsp, adapter_num_transformer_layers=1).eval()
    torch.manual_seed(0)
    for parameter in model.adapter.layers.parameters():
        torch.nn.init.normal_(parameter, std=0.05)
    together = speech_embeddings(model, processor, clips)
    alone = torch.cat([speech_embeddings(model, processor, [clip]) for clip in clips])
    torch.testing.assert_close(together, alone, rtol=1e-4, atol=1e-4)
    model.save_pretrained(tmp_path)
    loaded = BlspForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert loaded.config.adapter_num_transformer_layers == 1
    torch.testing.assert_close(speech_embeddings(loaded, processor, clips), together)
