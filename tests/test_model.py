"""BlspForConditionalGeneration: padding invariance, long audio, freezing, LoRA, count checks."""

import numpy as np
import peft
import pytest
import soundfile
import torch
from transformers import pipeline

import modeling_blsp
from configuration_blsp import BlspConfig
from modeling_blsp import BlspForConditionalGeneration
from processing_blsp import BlspProcessor

RATE = 16000
DURATIONS = [2.0, 7.5, 16.0, 31.0, 40.0]


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(0.1 * rng.standard_normal(int(seconds * RATE))).astype(np.float32) for seconds in DURATIONS]


@pytest.fixture(scope="module")
def qwen2(saved_blsp):
    model = BlspForConditionalGeneration.from_pretrained(saved_blsp["qwen2"]).eval()
    return model, BlspProcessor.from_pretrained(saved_blsp["qwen2"])


def valid_logits(model, inputs, row: int) -> torch.Tensor:
    """Logits of one row at its real (non-padding) positions."""
    with torch.no_grad():
        logits = model(**inputs).logits[row]
    return logits[inputs["attention_mask"][row].bool()]


def test_each_clip_in_a_mixed_batch_equals_the_clip_alone(qwen2, clips):
    model, processor = qwen2
    prompts = [processor.render_prompt("Transcribe.")] * len(clips)
    batch = processor(text=prompts, audio=clips)
    for row, clip in enumerate(clips):
        alone = processor(text=prompts[row], audio=clip)
        torch.testing.assert_close(valid_logits(model, batch, row), valid_logits(model, alone, 0), atol=1e-4, rtol=0)


def test_generate_is_padding_invariant(qwen2, clips):
    model, processor = qwen2
    prompts = [processor.render_prompt("Transcribe.")] * len(clips)
    batch = processor(text=prompts, audio=clips)
    batched = model.generate(**batch, do_sample=False, max_new_tokens=6)[:, batch["input_ids"].shape[1] :]
    for row, clip in enumerate(clips):
        alone_inputs = processor(text=prompts[row], audio=clip)
        alone = model.generate(**alone_inputs, do_sample=False, max_new_tokens=6)[
            0, alone_inputs["input_ids"].shape[1] :
        ]
        assert batched[row].tolist() == alone.tolist()


def test_speech_is_encoded_only_at_prefill(qwen2, clips, monkeypatch):
    model, processor = qwen2
    inputs = processor(text=processor.render_prompt("Transcribe."), audio=clips[0])
    encoded = []
    monkeypatch.setattr(model, "get_speech_features", counted(model.get_speech_features, encoded))
    cached = model.generate(**inputs, do_sample=False, max_new_tokens=5)
    assert len(encoded) == 1  # one encoder call for five generated tokens
    uncached = model.generate(**inputs, do_sample=False, max_new_tokens=5, use_cache=False)
    assert len(encoded) == 1 + 5  # without a cache every step reads the whole prompt, speech included
    assert cached.tolist() == uncached.tolist()
    speech = {key: inputs[key] for key in ("input_features", "input_features_mask", "attention_mask")}
    later_step = model.prepare_inputs_for_generation(
        inputs["input_ids"][:, -1:], **speech, use_cache=True, is_first_iteration=False
    )
    assert "input_features" not in later_step and "input_features_mask" not in later_step


def counted(function, calls: list):
    def wrapper(*args, **kwargs):
        calls.append(1)
        return function(*args, **kwargs)

    return wrapper


def test_beam_search_keeps_each_rows_speech_windows(qwen2, clips):
    model, processor = qwen2
    seconds = np.arange(20 * RATE) / RATE
    tone = 0.5 * np.sin(2 * np.pi * 300 * seconds)
    noise_then_tone = np.concatenate([clips[2][: 20 * RATE], tone]).astype(np.float32)
    chosen = [noise_then_tone, clips[0]]  # a 40 s clip of two different 20 s windows beside a 2 s clip
    prompts = [processor.render_prompt("Transcribe.")] * 2
    settings = dict(do_sample=False, num_beams=2, num_return_sequences=2, max_new_tokens=4)
    settings.update(return_dict_in_generate=True, output_scores=True)
    batched = model.generate(**processor(text=prompts, audio=chosen), **settings)
    for row, clip in enumerate(chosen):
        alone = model.generate(**processor(text=prompts[row], audio=clip), **settings)
        torch.testing.assert_close(
            batched.sequences_scores[2 * row : 2 * row + 2], alone.sequences_scores, atol=1e-5, rtol=0
        )


def test_pipeline_batch_equals_single_inputs(saved_blsp, clips):
    speech_llm = pipeline(model=saved_blsp["llama"], trust_remote_code=True)
    inputs = [{"raw": clip, "sampling_rate": RATE} for clip in clips]
    batched = speech_llm(inputs, instruction="Transcribe.", batch_size=len(clips), max_new_tokens=6)
    singles = [speech_llm(item, instruction="Transcribe.", max_new_tokens=6) for item in inputs]
    assert batched == singles
    assert all(set(result) == {"generated_text"} for result in batched)


def test_pipeline_reads_audio_files(saved_blsp, clips, tmp_path):
    speech_llm = pipeline(model=saved_blsp["llama"], trust_remote_code=True)
    path = str(tmp_path / "clip.wav")
    soundfile.write(path, clips[1], RATE, subtype="FLOAT")
    from_file = speech_llm(path, instruction="Transcribe.", max_new_tokens=6)
    from_array = speech_llm({"array": clips[1], "sampling_rate": RATE}, instruction="Transcribe.", max_new_tokens=6)
    assert from_file == from_array


def test_max_length_encoder_padding_gives_the_same_logits(saved_blsp, qwen2, clips):
    model, processor = qwen2
    original = BlspForConditionalGeneration.from_pretrained(saved_blsp["qwen2"], encoder_padding="max_length").eval()
    inputs = processor(text=[processor.render_prompt("Transcribe.")] * 2, audio=clips[:2])
    with torch.no_grad():
        torch.testing.assert_close(original(**inputs).logits, model(**inputs).logits, atol=1e-4, rtol=0)


def test_audio_over_30_seconds_is_fully_used(qwen2, clips):
    model, processor = qwen2
    prompt = processor.render_prompt("Transcribe.")
    full = processor(text=prompt, audio=clips[-1])
    altered = clips[-1].copy()
    altered[-5 * RATE :] = 0.0  # change only the last 5 s of the 40 s clip
    changed = processor(text=prompt, audio=altered)
    with torch.no_grad():
        difference = (model(**full).logits[0, -1] - model(**changed).logits[0, -1]).abs().max()
    assert difference > 1e-4


def test_placeholder_count_mismatch_names_both_numbers(qwen2, clips):
    model, processor = qwen2
    inputs = processor(text=processor.render_prompt("Transcribe."), audio=clips[0])
    inputs["input_ids"] = inputs["input_ids"][:, 1:]
    inputs["attention_mask"] = inputs["attention_mask"][:, 1:]
    inputs["input_ids"][0, inputs["input_ids"][0].tolist().index(processor.speech_token_id)] = 5
    with pytest.raises(ValueError, match="12 speech tokens but the audio gives 13 adapter frames"):
        model(**inputs)


def trainable_gradients(model, processor, clips) -> set[str]:
    inputs = processor(
        text=[processor.render_prompt("Continue.")] * 2, audio=clips[:2], text_target=["the cat", "a dog"]
    )
    model.train()
    model(**inputs).loss.backward()
    return {name for name, parameter in model.named_parameters() if parameter.grad is not None}


def test_default_freezing_puts_gradients_on_the_adapter_only(tiny_checkpoints, qwen2, clips):
    _, processor = qwen2
    model = BlspForConditionalGeneration.from_speech_text_pretrained(
        tiny_checkpoints["whisper"], tiny_checkpoints["qwen2"]
    )
    with_grad = trainable_gradients(model, processor, clips)
    adapter = {name for name, _ in model.named_parameters() if name.startswith("adapter.")}
    assert with_grad == adapter
    assert all(model.get_parameter(name).grad.abs().sum() > 0 for name in adapter)


def test_unfrozen_encoder_and_lora_on_the_llm(tiny_checkpoints, qwen2, clips):
    _, processor = qwen2
    model = BlspForConditionalGeneration.from_speech_text_pretrained(
        tiny_checkpoints["whisper"], tiny_checkpoints["qwen2"], freeze_speech_encoder=False
    )
    lora = peft.LoraConfig(r=4, target_modules=r".*language_model.*\.(q_proj|v_proj)", modules_to_save=None)
    model = peft.get_peft_model(model, lora)
    for name, parameter in model.named_parameters():
        if ".adapter." in name or ".speech_encoder." in name:
            parameter.requires_grad_(True)
    with_grad = trainable_gradients(model, processor, clips)
    assert any("lora_A" in name for name in with_grad)
    assert any(".speech_encoder.layers.0." in name for name in with_grad)
    assert any(".adapter.convs.0." in name for name in with_grad)
    assert not any(".language_model." in name and "lora_" not in name for name in with_grad)


def test_pretrained_weights_are_kept_exactly(tiny_checkpoints):
    from transformers import AutoModelForCausalLM, WhisperModel

    model = BlspForConditionalGeneration.from_speech_text_pretrained(
        tiny_checkpoints["whisper"], tiny_checkpoints["llama"]
    )
    llm = AutoModelForCausalLM.from_pretrained(tiny_checkpoints["llama"])
    encoder = WhisperModel.from_pretrained(tiny_checkpoints["whisper"]).encoder
    for name, tensor in llm.state_dict().items():
        assert torch.equal(model.language_model.state_dict()[name], tensor), name
    for name, tensor in encoder.state_dict().items():
        assert torch.equal(model.speech_encoder.state_dict()[name], tensor), name


def test_speech_scale_matched_to_the_token_embeddings(saved_blsp, clips):
    model = BlspForConditionalGeneration.from_pretrained(saved_blsp["qwen2"]).eval()
    processor = BlspProcessor.from_pretrained(saved_blsp["qwen2"])
    inputs = processor(text=[processor.render_prompt("Repeat.")], audio=clips[:1])
    features = {key: inputs[key] for key in ("input_features", "input_features_mask")}
    token_norm = float(model.get_input_embeddings().weight.detach().norm(dim=-1).mean())
    norm = model.adapter.layer_norm
    with torch.no_grad():
        before = model.get_speech_features(**features)
        factor = model.match_speech_scale_to_embeddings()
        after = model.get_speech_features(**features)
        # A LayerNorm's output rows have a mean square norm of |gain|^2 + |bias|^2: now the token embeddings' norm.
        expected_norm = float(torch.cat([norm.weight, norm.bias]).norm())
    torch.testing.assert_close(after, before * factor)
    assert expected_norm == pytest.approx(token_norm, rel=1e-5)
    assert factor == pytest.approx(token_norm / model.config.text_config.hidden_size**0.5, rel=1e-2)


@pytest.fixture
def compressed(qwen2, monkeypatch):
    """The tiny model with speech_compression="ctc"; an untrained adapter's frames are never read as the blank, so
    the blank wins wherever a frame's first component is positive (a property of the frame, not of its batch)."""
    model, processor = qwen2
    monkeypatch.setattr(model.config, "speech_compression", "ctc")
    readout = modeling_blsp.ctc_readout

    def some_blanks(speech_embeds, embeddings):
        logits = readout(speech_embeds, embeddings)
        return torch.cat([(speech_embeds[:, :1] > 0) * 1e4, logits[:, 1:]], dim=-1)

    monkeypatch.setattr(modeling_blsp, "ctc_readout", some_blanks)
    return model, processor


def kept_frames_as_text(model, inputs, temperature: float = 1.0) -> torch.Tensor:
    """One row's LLM input built by hand: the prompt's embeddings with only the kept frames' mixtures (their softmax
    at `temperature`; 0: the best token's embedding) in place of the speech placeholders."""
    ids = inputs["input_ids"][0]
    speech = model.get_speech_features(inputs["input_features"], inputs["input_features_mask"])
    logits = modeling_blsp.ctc_readout(speech, model.get_input_embeddings().weight)
    tokens = logits.argmax(-1)
    kept = (tokens != 0) & (tokens != torch.nn.functional.pad(tokens[:-1], (1, 0), value=-1))
    assert 0 < int(kept.sum()) < len(kept) - 1, "the test needs frames both kept and left out"
    scores = logits[:, 1:]
    weights = torch.softmax(scores / temperature, -1) if temperature else scores == scores.max(-1, keepdim=True).values
    mixture = weights.to(logits.dtype) @ model.get_input_embeddings().weight
    positions = (ids == model.config.speech_token_id).nonzero()[:, 0]
    embed = model.get_input_embeddings()
    return torch.cat([embed(ids[: positions[0]]), mixture[kept], embed(ids[positions[-1] + 1 :])])[None]


@pytest.mark.parametrize("temperature", [1.0, 0.5, 0.0])
def test_ctc_compression_equals_reading_only_the_kept_frames(compressed, clips, monkeypatch, temperature):
    """Left-out frames are as if absent: logits and greedy generation equal those of the LLM on a prompt built without
    them (positions counted without them, the mask carried through generation), at every ctc_temperature."""
    model, processor = compressed
    monkeypatch.setattr(model.config, "ctc_temperature", temperature)
    inputs = processor(text=processor.render_prompt("Transcribe."), audio=clips[1])
    with torch.no_grad():
        by_hand = kept_frames_as_text(model, inputs, temperature)
        reference = model.language_model(inputs_embeds=by_hand).logits[0, -1]
        torch.testing.assert_close(model(**inputs).logits[0, -1], reference, atol=1e-4, rtol=0)
    generated = model.generate(**inputs, do_sample=False, max_new_tokens=8)[0, inputs["input_ids"].shape[1] :]
    expected = model.language_model.generate(inputs_embeds=by_hand, do_sample=False, max_new_tokens=8)[0]
    assert generated.tolist() == expected.tolist()


def test_ctc_temperature_is_set_at_load_time_and_checked(saved_blsp):
    model = BlspForConditionalGeneration.from_pretrained(saved_blsp["qwen2"], ctc_temperature=0.0)
    assert model.config.ctc_temperature == 0.0
    with pytest.raises(ValueError, match="ctc_temperature must be 0 or more"):
        BlspConfig(ctc_temperature=-1.0)


def test_ctc_compression_is_padding_invariant(compressed, clips):
    model, processor = compressed
    prompts = [processor.render_prompt("Transcribe.")] * 3
    batch = processor(text=prompts, audio=clips[:3])
    batched = model.generate(**batch, do_sample=False, max_new_tokens=6)[:, batch["input_ids"].shape[1] :]
    for row, clip in enumerate(clips[:3]):
        alone = processor(text=prompts[row], audio=clip)
        expected = model.generate(**alone, do_sample=False, max_new_tokens=6)[0, alone["input_ids"].shape[1] :]
        assert batched[row].tolist() == expected.tolist()


def test_a_clip_read_as_all_blanks_keeps_its_frame_most_read_as_a_token(qwen2, clips, monkeypatch):
    """Issue 30: a clip that CTC compression reads as all blanks is not dropped (the answer would be that to no audio):
    its frame whose best token comes nearest the blank stays, in every row of a batch."""
    model, processor = qwen2
    monkeypatch.setattr(model.config, "speech_compression", "ctc")
    readout = modeling_blsp.ctc_readout

    def all_blanks(speech_embeds, embeddings):
        logits = readout(speech_embeds, embeddings)
        return torch.cat([torch.full_like(logits[:, :1], 1e4), logits[:, 1:]], dim=-1)

    monkeypatch.setattr(modeling_blsp, "ctc_readout", all_blanks)
    inputs = processor(text=[processor.render_prompt("Transcribe.")] * 2, audio=clips[:2])
    with torch.no_grad():
        speech = model.get_speech_features(inputs["input_features"], inputs["input_features_mask"])
        _, mask, _ = model.merge_speech(
            inputs["input_ids"], inputs["input_features"], inputs["input_features_mask"], inputs["attention_mask"], None
        )
    best = readout(speech, model.get_input_embeddings().weight)[:, 1:].max(-1).values
    speech_mask = inputs["input_ids"] == model.config.speech_token_id
    first = 0
    for row in range(2):
        kept = mask[row][speech_mask[row]].nonzero().squeeze(1).tolist()
        count = int(speech_mask[row].sum())
        assert kept == [int(best[first : first + count].argmax())]
        first += count


def test_inputs_embeds_with_input_features_are_refused_not_dropped(qwen2, clips):
    model, processor = qwen2
    inputs = processor(text=processor.render_prompt("Transcribe."), audio=clips[0])
    embeds, mask, _ = model.merge_speech(
        inputs["input_ids"], inputs["input_features"], inputs["input_features_mask"], inputs["attention_mask"], None
    )
    with torch.no_grad():
        merged = model(inputs_embeds=embeds, attention_mask=mask).logits
        assert torch.allclose(merged, model(**inputs).logits, atol=1e-5)
        with pytest.raises(ValueError, match="input_features need input_ids"):
            model(inputs_embeds=embeds, attention_mask=mask, input_features=inputs["input_features"])


def test_the_model_imports_only_the_config_the_adapter_and_the_bases():
    with open(modeling_blsp.__file__, encoding="utf-8") as file:
        local = {line.split()[1].lstrip(".") for line in file if line.strip().startswith("from .")}
    assert local == {"configuration_blsp", "adapter_blsp", "bases_blsp"}
