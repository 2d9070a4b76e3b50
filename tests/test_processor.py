"""BlspProcessor: audio decoding and validation, placeholder expansion, prompts, labels."""

import base64
import re

import numpy as np
import pytest
import soundfile
import soxr

from configuration_blsp import IGNORE_INDEX
from processing_blsp import AudioInputError, BlspProcessor, window_lengths

RATE = 16000


@pytest.fixture(scope="module")
def processors(saved_blsp):
    return {llm: BlspProcessor.from_pretrained(path) for llm, path in saved_blsp.items()}


def tone(seconds: float, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def speech_token_count(processor, inputs, row: int) -> int:
    return int((inputs["input_ids"][row] == processor.speech_token_id).sum())


def test_placeholder_expands_to_adapter_frames(processors):
    processor = processors["llama"]
    prompt = processor.render_prompt("Transcribe.")
    inputs = processor(text=[prompt, prompt], audio=[tone(2.0), tone(7.3)])
    # 2 s = 200 mel frames -> 100 encoder frames -> 50 -> 25 -> 13 adapter frames (one per 160 ms)
    assert speech_token_count(processor, inputs, 0) == 13
    assert speech_token_count(processor, inputs, 1) == processor.num_speech_tokens(len(tone(7.3)))
    assert inputs["input_features"].shape == (2, 80, 3000)  # 30 s windows, as Whisper's feature extractor pads
    assert inputs["input_features_mask"].sum(-1).tolist() == [200, 730]


def test_long_audio_is_split_into_windows_not_truncated(processors):
    processor = processors["llama"]
    inputs = processor(text=processor.render_prompt("Transcribe."), audio=tone(70.0))
    assert window_lengths(70 * RATE, 30 * RATE) == [373334, 373333, 373333]
    assert inputs["input_features"].shape[0] == 3
    assert int(inputs["input_features_mask"].sum()) == sum(n // 160 for n in window_lengths(70 * RATE, 30 * RATE))
    assert (
        speech_token_count(processor, inputs, 0) == 3 * 146
    )  # 2333 mel frames -> 1167 -> 584 -> 292 -> 146 per window


def test_base_template_and_chat_template(processors):
    assert processors["llama"].render_prompt("Say it.") == "<s>###[Human]:Say it. <speech>\n\n\n###[Assistant]:"
    assert processors["qwen2"].render_prompt("Say it.") == (
        "<|im_start|>user\nSay it. <speech><|im_end|>\n<|im_start|>assistant\n"
    )


def test_speech_first_layout(saved_blsp):
    processor = BlspProcessor.from_pretrained(saved_blsp["llama"], prompt_layout="speech_first")
    assert processor.render_prompt("Say it.") == "<s>###[Human]:<speech> Say it.\n\n\n###[Assistant]:"
    assert processor.render_prompt("Continue.", "a transcript") == (
        "<s>###[Human]:a transcript Continue.\n\n\n###[Assistant]:"
    )


@pytest.mark.parametrize("llm", ["llama", "qwen2"])
def test_apply_chat_template_matches_rendered_prompt(processors, llm, tmp_path):
    processor = processors[llm]
    path = str(tmp_path / "clip.flac")
    soundfile.write(path, tone(1.5), RATE)
    conversation = [
        {"role": "user", "content": [{"type": "text", "text": "Transcribe."}, {"type": "audio", "path": path}]}
    ]
    processor.audio_locations = [str(tmp_path)]  # a conversation's paths are read only where allowed
    from_chat = processor.apply_chat_template(conversation)
    processor.audio_locations = []
    direct = processor(text=processor.render_prompt("Transcribe."), audio=path)
    assert processor.apply_chat_template(conversation, tokenize=False) == processor.render_prompt("Transcribe.")
    assert from_chat["input_ids"].tolist() == direct["input_ids"].tolist()
    assert np.array_equal(from_chat["input_features"].numpy(), direct["input_features"].numpy())


def test_labels_learn_only_response_and_eos(processors):
    processor = processors["qwen2"]
    prompt = processor.render_prompt("Continue.")
    inputs = processor(text=[prompt, prompt], audio=[tone(1.0), tone(3.0)], text_target=["the cat", "a dog sat"])
    tokenizer = processor.tokenizer
    for row, target in enumerate(["the cat", "a dog sat"]):
        expected = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        labels = inputs["labels"][row].tolist()
        learned = [label for label in labels if label != IGNORE_INDEX]
        assert learned == expected
        assert labels[-len(expected) :] == expected
        assert inputs["input_ids"][row].tolist()[-len(expected) :] == expected
    speech = inputs["input_ids"] == processor.speech_token_id
    padding = inputs["attention_mask"] == 0
    assert (inputs["labels"][speech | padding] == IGNORE_INDEX).all()
    assert padding[0].any()


def test_resampling_and_stereo(processors, tmp_path):
    processor = processors["llama"]
    prompt = processor.render_prompt("Transcribe.")
    mono16 = tone(2.0)
    stereo44 = np.stack([tone(2.0, 44100), tone(2.0, 44100)], axis=1)
    path = str(tmp_path / "stereo44.wav")
    soundfile.write(path, stereo44, 44100, subtype="FLOAT")
    low8 = {"array": tone(2.0, 8000), "sampling_rate": 8000}
    inputs = processor(text=[prompt] * 3, audio=[mono16, path, low8])
    counts = [speech_token_count(processor, inputs, row) for row in range(3)]
    assert counts == [13, 13, 13]
    loaded = processor.load_audio(path)
    expected = soxr.resample(stereo44.mean(axis=1).astype(np.float32), 44100, RATE)
    np.testing.assert_allclose(loaded, expected, atol=1e-6)


def test_base64_audio_as_openai_input_audio_carries_it(processors, tmp_path):
    """A `data:` URI or a bare base64 string (what `transformers serve` passes on) decodes like the file."""
    processor = processors["llama"]
    path = str(tmp_path / "tone.flac")
    soundfile.write(path, tone(2.0), RATE)
    with open(path, "rb") as file:
        encoded = base64.b64encode(file.read()).decode()
    expected = processor.load_audio(path)
    np.testing.assert_array_equal(processor.load_audio(f"data:audio/flac;base64,{encoded}"), expected)
    np.testing.assert_array_equal(processor.load_audio(encoded), expected)
    with pytest.raises(AudioInputError, match=r"base64 audio \(\d+ characters\).*data: URI must hold base64"):
        processor.load_audio(f"data:audio/flac,{encoded}")
    not_audio = base64.b64encode(b"not audio at all" * 20).decode()
    with pytest.raises(AudioInputError, match=r"base64 audio \(\d+ characters\).*could not decode"):
        processor.load_audio(not_audio)
    with pytest.raises(AudioInputError, match="does not exist"):
        processor.load_audio(str(tmp_path / "missing.wav"))


@pytest.mark.parametrize(
    ("audio", "message"),
    [
        (np.zeros(0, dtype=np.float32), "empty"),
        (np.full(16000, np.nan, dtype=np.float32), "NaN"),
        (np.zeros((2, 2, 16000), dtype=np.float32), "3 dimensions"),
        (np.zeros(50, dtype=np.float32), "too short"),
    ],
)
def test_bad_arrays_give_clear_errors(processors, audio, message):
    processor = processors["llama"]
    with pytest.raises(AudioInputError, match=message):
        processor(text=processor.render_prompt("Transcribe."), audio=audio)


def test_non_audio_file_names_the_file(processors, tmp_path):
    processor = processors["llama"]
    path = tmp_path / "notes.txt"
    path.write_text("this is not audio")
    with pytest.raises(AudioInputError, match=r"notes\.txt.*could not decode"):
        processor(text=processor.render_prompt("Transcribe."), audio=str(path))


def test_placeholder_and_clip_counts_must_match(processors):
    processor = processors["llama"]
    prompt = processor.render_prompt("Transcribe.")
    with pytest.raises(ValueError, match="2 speech placeholder.*1 audio clip"):
        processor(text=[prompt, prompt], audio=[tone(1.0)])


def test_kwargs_merge_as_transformers_processors_do_and_unknown_ones_are_refused(processors):
    processor = processors["qwen2"]
    prompt, clip = processor.render_prompt("Transcribe."), np.full(16000, 0.1, dtype=np.float32)
    plain = processor(text=[prompt, prompt + " now"], audio=[clip, clip])
    for kwargs in (
        {"padding": True, "return_tensors": "pt"},
        {"text_kwargs": {"padding": "longest"}, "audio_kwargs": {"sampling_rate": 16000}},
        {"common_kwargs": {"return_tensors": "pt"}},
    ):
        merged = processor(text=[prompt, prompt + " now"], audio=[clip, clip], **kwargs)
        assert all(torch_equal(merged[key], plain[key]) for key in plain)
    assert isinstance(processor(text=prompt, audio=clip, return_tensors="np")["input_ids"], np.ndarray)
    for kwargs, named in (
        ({"truncation": True}, "truncation"),
        ({"padding": "max_length"}, "padding='max_length'"),
        ({"text_kwargs": {"max_length": 8}}, "text_kwargs['max_length']"),
        ({"images_kwargs": {}}, "images_kwargs"),
    ):
        with pytest.raises(TypeError, match=f"does not take {re.escape(named)}"):
            processor(text=prompt, audio=clip, **kwargs)


def test_chat_template_kwargs_reach_the_template_and_call_kwargs_the_call(processors):
    processor = processors["qwen2"]
    conversation = [{"role": "user", "content": [{"type": "audio", "array": np.full(16000, 0.1, dtype=np.float32)}]}]
    inputs = processor.apply_chat_template(conversation, tools=None, processor_kwargs={"return_tensors": "np"})
    assert isinstance(inputs["input_ids"], np.ndarray)
    assert processor.apply_chat_template(conversation, return_dict=False).tolist() == inputs["input_ids"].tolist()
    with pytest.raises(ValueError, match="continue_final_message"):
        processor.apply_chat_template(conversation, continue_final_message=True)


def test_the_processors_chat_template_is_the_one_prompts_render_with(saved_blsp):
    template = "{% for message in messages %}<{{ message['role'] }}>{{ message['content'] }}{% endfor %}<assistant>"
    processor = BlspProcessor.from_pretrained(saved_blsp["qwen2"], chat_template=template)
    assert processor.tokenizer.chat_template == processor.chat_template == template
    assert processor.render_prompt("Transcribe.") == f"<user>Transcribe. {processor.speech_token}<assistant>"


def torch_equal(first, second) -> bool:
    return first.shape == second.shape and bool((first == second).all())


def test_audio_padding_adds_silence_around_each_clip_and_is_saved(processors, tmp_path):
    processor = processors["llama"]
    processor.save_pretrained(tmp_path)
    padded = BlspProcessor.from_pretrained(tmp_path, audio_padding_seconds=0.15)
    prompt, clip = processor.render_prompt("Transcribe."), tone(2.0)
    by_hand = processor(text=prompt, audio=np.pad(clip, round(0.15 * RATE)))
    inputs = padded(text=prompt, audio=clip)
    # 2.3 s = 230 mel frames -> 115 -> 58 -> 29 -> 15 adapter frames: the padding is heard and counted
    assert speech_token_count(padded, inputs, 0) == padded.num_speech_tokens(len(clip)) == 15
    assert inputs["input_ids"].tolist() == by_hand["input_ids"].tolist()
    np.testing.assert_array_equal(inputs["input_features"].numpy(), by_hand["input_features"].numpy())
    padded.save_pretrained(tmp_path / "padded")
    assert BlspProcessor.from_pretrained(tmp_path / "padded").audio_padding_seconds == 0.15
    assert "audio_padding_seconds" not in (tmp_path / "padded" / "tokenizer_config.json").read_text()
    assert processor.audio_padding_seconds == 0.0  # the default: clips as given
    with pytest.raises(ValueError, match="audio_padding_seconds must be in"):
        BlspProcessor.from_pretrained(tmp_path, audio_padding_seconds=-0.1)
