"""Changing a trained adapter's architecture: self-attention layers (`adapter_num_transformer_layers`) added to it
start as the identity, keep clips apart and survive a save and a load; a halved stride gives twice the speech tokens
with the same weights, and the processor follows."""

import pytest
import torch

from blsp_steps.training import load_model_and_processor, select_trainable_parameters
from configuration_blsp import BlspConfig
from modeling_blsp import BlspForConditionalGeneration
from processing_blsp import BlspProcessor
from train_adapter import ModelArguments

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


def test_a_trained_adapter_can_halve_its_last_stride_and_the_processor_follows(initial_blsp, clips):
    """`--adapter_conv_stride 2 2 1` on a checkpoint: the same weights give twice the speech tokens, and the processor
    that training saves with the model expands the placeholder to that count."""

    def load(stride):
        model_args = ModelArguments(model_name_or_path=initial_blsp, adapter_conv_stride=stride)
        return load_model_and_processor(model_args, None, None)

    (eight, processor), (four, faster) = load(None), load([2, 2, 1])
    assert four.config.adapter_conv_stride == [2, 2, 1] and faster.speech_downsampling[-1] == [5, 1, 2]
    assert torch.equal(four.adapter.convs[-1].weight, eight.adapter.convs[-1].weight)
    tokens = [speech_embeddings(*pair, clips[:1]).shape[0] for pair in ((eight, processor), (four, faster))]
    assert tokens[1] in (2 * tokens[0] - 1, 2 * tokens[0])
    with pytest.raises(ValueError, match="one stride per adapter convolution"):
        BlspConfig(adapter_conv_stride=[2, 2])


def test_top_encoder_layers_train_and_the_rest_stays_frozen(initial_blsp):
    model = BlspForConditionalGeneration.from_pretrained(initial_blsp)
    encoder = model.speech_encoder
    select_trainable_parameters(model, train_speech_encoder=False, top_layers=1)
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    top = len(encoder.layers) - 1
    assert any(name.startswith(f"speech_encoder.layers.{top}.") for name in trainable)
    assert "speech_encoder.layer_norm.weight" in trainable
    assert {name.split(".")[0] for name in trainable} == {"adapter", "speech_encoder"}
    assert not any(name.startswith(f"speech_encoder.layers.{top - 1}.") for name in trainable)
    assert not any(name.startswith(("speech_encoder.conv", "speech_encoder.embed")) for name in trainable)
    with pytest.raises(ValueError, match="cannot train the top"):
        select_trainable_parameters(model, train_speech_encoder=False, top_layers=len(encoder.layers) + 1)
    with pytest.raises(ValueError, match="drop --train_speech_encoder_top_layers"):
        ModelArguments(model_name_or_path=initial_blsp, train_speech_encoder=True, train_speech_encoder_top_layers=1)
