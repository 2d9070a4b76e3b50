"""The BLSP pipeline: speech (plus an optional instruction) in, generated text out."""

from transformers import Pipeline

DEFAULT_GENERATE_KWARGS = {"do_sample": False, "max_new_tokens": 128}


def describe_input(item, index: int) -> str:
    """A name for input `index` of a batch in error messages: its file name when it has one."""
    if isinstance(item, str):
        return f"audio file {item!r}"
    if isinstance(item, dict) and item.get("path"):
        return f"audio {item['path']!r}"
    return f"audio input {index}"


def is_conversation(inputs) -> bool:
    """Whether `inputs` is one chat conversation: a non-empty list of `{"role": ..., "content": ...}` messages."""
    return isinstance(inputs, list) and bool(inputs) and all(isinstance(m, dict) and "role" in m for m in inputs)


class BlspPipeline(Pipeline):
    """Speech-to-text generation with a BLSP model.

    Inputs: an audio file path, `{"raw"|"array": ndarray, "sampling_rate": int}`, a 1-D array at 16 kHz, a chat
    conversation (a list of `{"role", "content"}` messages whose content may hold `{"type": "audio", "path"|"audio"|
    "url"|"array": ...}` and `{"type": "text", "text": ...}` items, rendered by the processor's `apply_chat_template`),
    or a list of any of these (processed in batches of `batch_size`). Returns `{"generated_text": str}` per input: the
    assistant's answer. Its inputs are the caller's own: paths and URLs are read (`pipeline("any-to-any")` and
    `transformers serve` read only the audio a conversation carries, unless the processor's `audio_locations` allow).

    Example:

    ```python
    >>> from transformers import pipeline
    >>> speech_llm = pipeline(model="path/or/hub-id", trust_remote_code=True)
    >>> speech_llm("speech.flac", instruction="Please transcribe the following audio.")
    {'generated_text': '...'}
    >>> speech_llm([{"role": "user", "content": [{"type": "audio", "path": "speech.flac"},
    ...                                          {"type": "text", "text": "Please transcribe the following audio."}]}])
    {'generated_text': '...'}
    ```
    """

    _load_processor = True
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False
    _load_video_processor = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.processor.check_speech_token(self.model.config)

    def _sanitize_parameters(self, instruction=None, generate_kwargs=None, **kwargs):
        forward_params = {**DEFAULT_GENERATE_KWARGS, **(generate_kwargs or {}), **kwargs}
        return {"instruction": instruction}, forward_params, {}

    def __call__(self, inputs, batch_size: int | None = None, **kwargs):
        """Generate for one input or a list of inputs; a list is run in batches of `batch_size` (default 8)."""
        preprocess_params, forward_params, _ = self._sanitize_parameters(**kwargs)
        single = is_conversation(inputs) or not isinstance(inputs, list)
        items = [inputs] if single else inputs
        batch_size = batch_size or self._batch_size or 8
        results = []
        for start in range(0, len(items), batch_size):
            model_inputs = self.preprocess(items[start : start + batch_size], **preprocess_params)
            self.check_context(model_inputs, items[start : start + batch_size], forward_params)
            results.extend(self.postprocess(self.forward(model_inputs, **forward_params)))
        return results[0] if single else results

    def preprocess(self, inputs, instruction=None):
        items = [inputs] if is_conversation(inputs) or not isinstance(inputs, list) else inputs
        conversations = [is_conversation(item) for item in items]
        if all(conversations):
            if instruction is not None:
                raise ValueError("`instruction` is for audio inputs; a conversation carries its own text.")
            return self.processor.apply_chat_template([self.processor.read_audio_items(item) for item in items])
        if any(conversations):
            raise ValueError("Give a list of conversations or a list of audio inputs, not a mix of both.")
        prompts = [self.processor.render_prompt(instruction)] * len(items)
        return self.processor(text=prompts, audio=items)

    def check_context(self, model_inputs, items: list, generate_kwargs: dict):
        """Refuse inputs whose speech tokens, prompt and `max_new_tokens` exceed the LLM's positions (the LLM would
        otherwise answer nothing, silently)."""
        limit = getattr(self.model.config.text_config, "max_position_embeddings", None)
        new_tokens = generate_kwargs.get("max_new_tokens") or 0
        lengths = model_inputs["attention_mask"].sum(dim=1).tolist()
        speech = (model_inputs["input_ids"] == self.processor.speech_token_id).sum(dim=1).tolist()
        for index, (item, length, speech_tokens) in enumerate(zip(items, lengths, speech)):
            error = self.processor.context_error(speech_tokens, length - speech_tokens, new_tokens, limit)
            if error:
                name = f"conversation {index}" if is_conversation(item) else describe_input(item, index)
                raise ValueError(f"{name} is {error}")

    def _forward(self, model_inputs, **generate_kwargs):
        prompt_length = model_inputs["input_ids"].shape[1]
        return {"sequences": self.model.generate(**model_inputs, **generate_kwargs)[:, prompt_length:]}

    def postprocess(self, model_outputs):
        texts = self.processor.batch_decode(model_outputs["sequences"], skip_special_tokens=True)
        return [{"generated_text": text.strip()} for text in texts]


__all__ = ["BlspPipeline"]
