"""The BLSP pipeline: speech (plus an optional instruction) in, generated text out."""

from transformers import Pipeline

DEFAULT_GENERATE_KWARGS = {"do_sample": False, "max_new_tokens": 128}


class BlspPipeline(Pipeline):
    """Speech-to-text generation with a BLSP model.

    Inputs: an audio file path, `{"raw"|"array": ndarray, "sampling_rate": int}`, a 1-D array at 16 kHz, or a list
    of these (processed in batches of `batch_size`). Returns `{"generated_text": str}` per input.

    Example:

    ```python
    >>> from transformers import pipeline
    >>> speech_llm = pipeline(model="path/or/hub-id", trust_remote_code=True)
    >>> speech_llm("speech.flac", instruction="Please transcribe the following audio.")
    {'generated_text': '...'}
    ```
    """

    _load_processor = True
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False
    _load_video_processor = False

    def _sanitize_parameters(self, instruction=None, generate_kwargs=None, **kwargs):
        forward_params = {**DEFAULT_GENERATE_KWARGS, **(generate_kwargs or {}), **kwargs}
        return {"instruction": instruction}, forward_params, {}

    def __call__(self, inputs, batch_size: int | None = None, **kwargs):
        """Generate for one input or a list of inputs; a list is run in batches of `batch_size` (default 8)."""
        preprocess_params, forward_params, _ = self._sanitize_parameters(**kwargs)
        items = inputs if isinstance(inputs, list) else [inputs]
        batch_size = batch_size or self._batch_size or 8
        results = []
        for start in range(0, len(items), batch_size):
            model_inputs = self.preprocess(items[start : start + batch_size], **preprocess_params)
            results.extend(self.postprocess(self.forward(model_inputs, **forward_params)))
        return results if isinstance(inputs, list) else results[0]

    def preprocess(self, inputs, instruction=None):
        clips = inputs if isinstance(inputs, list) else [inputs]
        prompts = [self.processor.render_prompt(instruction)] * len(clips)
        return self.processor(text=prompts, audio=clips)

    def _forward(self, model_inputs, **generate_kwargs):
        prompt_length = model_inputs["input_ids"].shape[1]
        return {"sequences": self.model.generate(**model_inputs, **generate_kwargs)[:, prompt_length:]}

    def postprocess(self, model_outputs):
        texts = self.processor.batch_decode(model_outputs["sequences"], skip_special_tokens=True)
        return [{"generated_text": text.strip()} for text in texts]


__all__ = ["BlspPipeline"]
