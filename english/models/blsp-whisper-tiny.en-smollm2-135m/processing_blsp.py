"""BLSP processor: audio in (`audio_blsp`), prompts rendered, speech placeholders expanded, training labels built.

This module is the one place where prompt templates and layouts live: step 1 (continuations from
transcripts), step 2 (training on speech) and inference all render their prompts here.
"""

import itertools
import os
import re

import numpy as np
from transformers import AutoFeatureExtractor, AutoTokenizer, BatchFeature
from transformers.processing_utils import ProcessingKwargs, ProcessorMixin, Unpack

try:
    from .audio_blsp import (
        AUDIO_LOCATIONS_ENV,
        MAX_AUDIO_SECONDS,
        MIN_AUDIO_SECONDS,
        AudioInputError,
        carried_audio,
        load_audio,
        log_mel,
        pad_log_mels,
        window_lengths,
    )
    from .configuration_blsp import HUB_KWARGS, IGNORE_INDEX, BlspConfig, add_speech_token, conv_output_length
except ImportError:  # imported as a top-level module by this repository's scripts
    from audio_blsp import (
        AUDIO_LOCATIONS_ENV,
        MAX_AUDIO_SECONDS,
        MIN_AUDIO_SECONDS,
        AudioInputError,
        carried_audio,
        load_audio,
        log_mel,
        pad_log_mels,
        window_lengths,
    )
    from configuration_blsp import HUB_KWARGS, IGNORE_INDEX, BlspConfig, add_speech_token, conv_output_length

CONTINUATION_INSTRUCTION = "Continue the following text in a coherent and engaging style with less than 40 words."
TASK_INSTRUCTIONS = {  # the tasks of BLSP's paper: the default instruction of each (evaluation, the demo)
    "transcribe": "Please transcribe the following audio.",
    "translate": "Please translate the following audio into German text.",
    "answer": "Please answer the question about the following audio.",
    "continue": CONTINUATION_INSTRUCTION,
}
BASE_TEMPLATE_TURN = "###[{role}]:{content}\n\n\n"
BASE_TEMPLATE_ROLES = {"user": "Human", "assistant": "Assistant", "system": "System"}
PROMPT_LAYOUTS = ("instruction_first", "speech_first")
FEATURE_PADDINGS = ("longest", "max_length")
PROMPT_TOKENIZATIONS = ("whole", "segments")


class BlspProcessorKwargs(ProcessingKwargs, total=False):
    """`BlspProcessor.__call__`'s keyword arguments, merged as transformers' processors merge theirs: flat, per
    modality (`text_kwargs`, `audio_kwargs`) or `common_kwargs`. `text_target` is BLSP's own."""

    text_target: str | list[str] | None


CALL_KWARGS = {
    "text_kwargs": {"padding", "return_tensors"},
    "audio_kwargs": {"padding", "sampling_rate", "return_tensors"},
}
"""The modality kwargs `BlspProcessor.__call__` acts on; any other is refused, not ignored."""
CALL_NAMES = frozenset().union(*CALL_KWARGS.values(), CALL_KWARGS, {"text_target", "common_kwargs"})
"""Every kwarg `BlspProcessor.__call__` takes: the modality kwargs, flat or grouped, `text_target`, `common_kwargs`."""


def build_messages(
    instruction: str | None,
    content: str,
    layout: str,
    system_prompt: str | None,
    separator: str = " ",
    history: list[dict] | None = None,
) -> list[dict]:
    """One user turn holding the instruction and the content (a transcript or the speech placeholder), after the
    system prompt and the `history` turns (e.g. few-shot examples) when given."""
    if layout not in PROMPT_LAYOUTS:
        raise ValueError(f"prompt layout must be one of {PROMPT_LAYOUTS}, got {layout!r}")
    parts = [instruction, content] if layout == "instruction_first" else [content, instruction]
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return (
        messages + list(history or []) + [{"role": "user", "content": separator.join(part for part in parts if part)}]
    )


def render_conversation(tokenizer, messages: list[dict], add_generation_prompt: bool = True, **template_kwargs) -> str:
    """Render text-only messages with the LLM's chat template (`template_kwargs`: its variables, e.g. `tools`), or
    BLSP's `###[Human]:` template for base LLMs.

    The result is complete (BOS included where the LLM wants one): tokenize it with `add_special_tokens=False`.
    """
    if tokenizer.chat_template:
        return tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt, **template_kwargs
        )
    turns = [
        BASE_TEMPLATE_TURN.format(role=BASE_TEMPLATE_ROLES[message["role"]], content=message["content"])
        for message in messages
    ]
    text = (tokenizer.bos_token or "") + "".join(turns)
    if add_generation_prompt:
        return text + "###[Assistant]:"
    return text


def render_prompt(
    tokenizer,
    instruction: str | None,
    content: str,
    layout: str = "instruction_first",
    system_prompt: str | None = None,
    separator: str = " ",
    history: list[dict] | None = None,
) -> str:
    """The generation prompt for an instruction about `content` (a transcript, or the speech placeholder), after the
    `history` turns when given."""
    messages = build_messages(instruction, content, layout, system_prompt, separator, history)
    return render_conversation(tokenizer, messages)


def tokenize_segments(tokenizer, text: str) -> list[int]:
    """Ids of `text` with each piece between special tokens tokenized on its own, as the original BLSP release did.

    A sentencepiece tokenizer (Llama's) then starts every piece with its word boundary `▁`, also after the speech.
    """
    specials = {token.content for token in tokenizer.added_tokens_decoder.values() if token.special}
    pattern = "(" + "|".join(re.escape(token) for token in sorted(specials, key=len, reverse=True)) + ")"
    ids = []
    for piece in re.split(pattern, text) if specials else [text]:
        if piece in specials:
            ids.append(tokenizer.convert_tokens_to_ids(piece))
        elif piece:
            ids.extend(tokenizer(piece, add_special_tokens=False)["input_ids"])
    return ids


def join_content(parts: list[str | None], speech_token: str, speech_separator: str) -> str:
    """Text parts and speech placeholders (`None`) joined by spaces, with `speech_separator` next to the speech."""
    text = ""
    for index, part in enumerate(parts):
        if index:
            text += speech_separator if part is None or parts[index - 1] is None else " "
        text += speech_token if part is None else part
    return text


def flatten_content(content) -> tuple[str, list]:
    """Chat content (a string or a list of `{"type": "text"|"audio", ...}` items) as text plus its audio sources."""
    if isinstance(content, str):
        return content, []
    texts, audios = [], []
    for item in content:
        if item.get("type") == "audio":
            source = next((item[key] for key in ("audio", "path", "url", "array") if item.get(key) is not None), None)
            if source is None:
                raise ValueError(f"an audio content item needs 'audio', 'path', 'url' or 'array'; got {item}")
            audios.append(source)
            texts.append(None)
        elif item.get("type") == "text":
            texts.append(item["text"])
        else:
            raise ValueError(f"content items must have type 'text' or 'audio', got {item}")
    return texts, audios


def check_audio_padding(seconds: float) -> float:
    if not 0.0 <= seconds <= 1.0:
        raise ValueError(f"audio_padding_seconds must be in [0, 1], got {seconds!r}")
    return seconds


class BlspProcessor(ProcessorMixin):
    r"""
    Wraps a Whisper feature extractor and an LLM tokenizer into one processor for [`BlspForConditionalGeneration`].

    `processor(text=..., audio=...)` turns each speech placeholder of the text into exactly as many speech tokens as
    the adapter produces for its clip; `text_target=` appends responses and builds training `labels`.

    Args:
        feature_extractor ([`WhisperFeatureExtractor`]): Log-mel features of the speech encoder.
        tokenizer ([`PreTrainedTokenizerBase`]): The LLM's tokenizer, holding the speech placeholder token.
        chat_template (`str`, *optional*): The LLM's chat template, which prompts are rendered with; it becomes the
            tokenizer's (default: the tokenizer's own), so step 1, step 2 and inference render alike.
        speech_token (`str`, defaults to `"<speech>"`): The speech placeholder.
        speech_downsampling (`list`, *optional*): `(kernel, stride, padding)` of every convolution from log-mel frames
            to speech tokens; defaults to [`BlspConfig`]'s.
        prompt_layout (`"instruction_first"` or `"speech_first"`): Order of instruction and speech in a prompt.
        system_prompt (`str`, *optional*): System message for chat LLMs.
        feature_padding (`"longest"` or `"max_length"`): Each 30 s window's features: its own frames only, or the
            feature extractor's full 30 s window with the extractor's frame count (what `encoder_padding="unmasked"`
            models need).
        speech_separator (`str`, defaults to `" "`): The text between the speech placeholder and the instruction.
        prompt_tokenization (`"whole"` or `"segments"`): Tokenize a rendered prompt as one string, or each piece
            between special tokens (BOS, speech, chat markers) on its own, as the original BLSP release did.
        audio_padding_seconds (`float`, defaults to 0; at most 1): Silence added before and after every clip before
            its features. An adapter that only heard clips with silence around the speech loses the first and last words
            of a clip cut tight at them (as recorded prompts and trimmed microphone takes are).
    """

    def __init__(
        self,
        feature_extractor=None,
        tokenizer=None,
        chat_template=None,
        speech_token: str = "<speech>",
        speech_downsampling=None,
        prompt_layout: str = "instruction_first",
        system_prompt: str | None = None,
        feature_padding: str = "longest",
        speech_separator: str = " ",
        prompt_tokenization: str = "whole",
        audio_padding_seconds: float = 0.0,
    ):
        for name, value, choices in (
            ("prompt_layout", prompt_layout, PROMPT_LAYOUTS),
            ("feature_padding", feature_padding, FEATURE_PADDINGS),
            ("prompt_tokenization", prompt_tokenization, PROMPT_TOKENIZATIONS),
        ):
            if value not in choices:
                raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        self.speech_token = speech_token
        self.speech_token_id = add_speech_token(tokenizer, speech_token)
        # Prompts are left-padded (`pad`); pipelines that batch this processor's outputs pad on these sides.
        tokenizer.padding_side = feature_extractor.padding_side = "left"
        self.speech_downsampling = [list(conv) for conv in speech_downsampling or BlspConfig().speech_downsampling]
        self.prompt_layout = prompt_layout
        self.system_prompt = system_prompt
        self.feature_padding = feature_padding
        self.speech_separator = speech_separator
        self.prompt_tokenization = prompt_tokenization
        self.audio_padding_seconds = check_audio_padding(audio_padding_seconds)
        # The operator's limits on request audio (not saved with the processor).
        self.audio_locations = [entry for entry in os.environ.get(AUDIO_LOCATIONS_ENV, "").split(",") if entry]
        self.max_audio_seconds = MAX_AUDIO_SECONDS
        self.context_limit = None  # the LLM's positions, when loaded with its config
        if chat_template is not None:  # the one renderer (`render_prompt`) reads the tokenizer's template
            tokenizer.chat_template = chat_template
        super().__init__(feature_extractor, tokenizer, chat_template=tokenizer.chat_template)

    @classmethod
    def _load_tokenizer_from_pretrained(cls, sub_processor_type, pretrained_model_name_or_path, subfolder="", **kwargs):
        """Look the LLM tokenizer up with the checkpoint's text config (read by the local `BlspConfig`).

        `AutoTokenizer` otherwise loads the folder's config through `AutoConfig`, which asks whether to run the
        folder's BLSP code even when this class is already imported.
        """
        if kwargs.get("config") is None:
            try:
                hub_kwargs = {key: kwargs[key] for key in HUB_KWARGS if key in kwargs}
                config = BlspConfig.from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **hub_kwargs)
                kwargs["config"] = config.text_config
            except (OSError, ValueError):  # no BLSP config next to the processor: let AutoTokenizer decide
                pass
        return super()._load_tokenizer_from_pretrained(
            sub_processor_type, pretrained_model_name_or_path, subfolder=subfolder, **kwargs
        )

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """Load a saved processor, checking its speech token against the checkpoint's config when there is one."""
        padding = kwargs.pop("audio_padding_seconds", None)  # not the tokenizer's: it would save it in its config
        processor = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        if padding is not None:
            processor.audio_padding_seconds = check_audio_padding(padding)
        hub_kwargs = {key: kwargs[key] for key in (*HUB_KWARGS, "subfolder") if key in kwargs}
        try:
            config = BlspConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs)
        except (OSError, ValueError):  # a processor saved without a model
            return processor
        processor.check_speech_token(config)
        processor.context_limit = getattr(config.text_config, "max_position_embeddings", None)
        return processor

    def check_speech_token(self, config: BlspConfig) -> None:
        """Refuse a config whose speech token is not this tokenizer's (the model would embed the wrong ids)."""
        if config.speech_token_id is not None and config.speech_token_id != self.speech_token_id:
            raise ValueError(
                f"The config's speech_token_id {config.speech_token_id} is not the tokenizer's id of "
                f"{self.speech_token!r}, {self.speech_token_id}: config and tokenizer come from different "
                "checkpoints. Save the model and processor together, or set the config's speech_token_id to "
                f"{self.speech_token_id}."
            )

    @classmethod
    def from_speech_text_pretrained(
        cls, speech_pretrained_model_name_or_path, text_pretrained_model_name_or_path, config=None, **kwargs
    ):
        """Build a processor from a Whisper checkpoint (its feature extractor) and an LLM checkpoint (its tokenizer).

        `config` (a [`BlspConfig`]) sets the speech placeholder and downsampling; other kwargs go to `__init__`.
        """
        feature_extractor = AutoFeatureExtractor.from_pretrained(speech_pretrained_model_name_or_path)
        tokenizer = AutoTokenizer.from_pretrained(text_pretrained_model_name_or_path)
        if config is not None:
            kwargs.setdefault("speech_token", config.speech_token)
            kwargs.setdefault("speech_downsampling", config.speech_downsampling)
        processor = cls(feature_extractor=feature_extractor, tokenizer=tokenizer, **kwargs)
        processor.context_limit = getattr(getattr(config, "text_config", None), "max_position_embeddings", None)
        return processor

    @property
    def sampling_rate(self) -> int:
        return self.feature_extractor.sampling_rate

    @property
    def model_input_names(self) -> list[str]:
        return ["input_ids", "attention_mask", "input_features", "input_features_mask"]

    def load_audio(self, source, sampling_rate: int | None = None) -> np.ndarray:
        """One clip as float32 mono at the feature extractor's rate (decoded, mixed down, resampled); its length,
        read from the header first, within `check_length`."""
        return load_audio(source, self.sampling_rate, sampling_rate, self.check_length)

    def check_length(self, num_samples: int) -> None:
        """Refuse a clip longer than `max_audio_seconds`, or whose speech tokens alone exceed the LLM's positions."""
        seconds = num_samples / self.sampling_rate
        if seconds > self.max_audio_seconds:
            raise AudioInputError(
                f"it is {seconds:.1f} s long, beyond the processor's max_audio_seconds ({self.max_audio_seconds:g} s); "
                "split it into shorter clips"
            )
        if self.context_limit is not None and seconds > 30 * (self.context_limit + 1):  # >= 1 token per 30 s window
            tokens = f"more than {self.context_limit}"
        elif self.context_limit is not None and self.num_speech_tokens(num_samples) > self.context_limit:
            tokens = str(self.num_speech_tokens(num_samples))
        else:
            return
        raise AudioInputError(
            f"it is too long for this model: {seconds:.1f} s, {tokens} speech tokens, beyond the LLM's "
            f"{self.context_limit} positions; split it into shorter clips"
        )

    def frame_count(self, num_samples: int) -> int:
        """Real log-mel frames of a window: whole hops, or the feature extractor's count (hops rounded up)."""
        hop = self.feature_extractor.hop_length
        return -(-num_samples // hop) if self.feature_padding == "max_length" else num_samples // hop

    @property
    def audio_padding_samples(self) -> int:
        return round(self.audio_padding_seconds * self.sampling_rate)

    def num_speech_tokens(self, num_samples: int) -> int:
        """Speech tokens the model produces for a clip of `num_samples` at the feature extractor's rate (its padding
        with `audio_padding_seconds` included)."""
        windows = window_lengths(num_samples + 2 * self.audio_padding_samples, self.feature_extractor.n_samples)
        return sum(conv_output_length(self.frame_count(length), self.speech_downsampling) for length in windows)

    def render_prompt(self, instruction: str | None, content: str | None = None) -> str:
        """The generation prompt for `instruction` about `content`; `content=None` means the speech itself."""
        return render_prompt(
            self.tokenizer,
            instruction,
            self.speech_token if content is None else content,
            layout=self.prompt_layout,
            system_prompt=self.system_prompt,
            separator=self.speech_separator if content is None else " ",
        )

    def extract_features(self, clips: list[np.ndarray]) -> tuple[dict, list[int]]:
        """Log-mel features of every 30 s window of every clip, zero-padded to 30 s, with a frame mask.

        Each window is featurised alone, so a clip's features never depend on the other clips of its batch. Windows
        are padded to 30 s as Whisper's feature extractor pads them, so that inputs made one conversation at a time
        stack into a batch (as `pipeline("any-to-any", batch_size=...)` stacks them); the model encodes only the
        longest real length of a batch (`encoder_padding="longest"`).
        """
        windows, tokens_per_clip = [], []
        min_samples = round(MIN_AUDIO_SECONDS * self.sampling_rate)
        for clip in clips:
            if len(clip) < min_samples:
                raise AudioInputError(
                    f"Bad audio array: it is too short ({len(clip)} samples; at least {min_samples}, i.e. "
                    f"{1000 * MIN_AUDIO_SECONDS:g} ms, are needed)."
                )
            tokens_per_clip.append(self.num_speech_tokens(len(clip)))
            clip = np.pad(clip, self.audio_padding_samples)
            bounds = np.cumsum([0] + window_lengths(len(clip), self.feature_extractor.n_samples))
            windows.extend(clip[start:end] for start, end in itertools.pairwise(bounds))
        features = [log_mel(self.feature_extractor, window, self.feature_padding) for window in windows]
        frame_counts = [self.frame_count(len(window)) for window in windows]
        return pad_log_mels(features, frame_counts, self.feature_extractor.nb_max_frames), tokens_per_clip

    def prompt_ids(self, prompt: str) -> list[int]:
        """Token ids of a rendered prompt (complete: no special tokens added), one placeholder per clip."""
        if self.prompt_tokenization == "segments":
            return tokenize_segments(self.tokenizer, prompt)
        return self.tokenizer(prompt, add_special_tokens=False)["input_ids"]

    @staticmethod
    def context_error(speech_tokens: int, prompt_tokens: int, max_new_tokens: int, limit: int | None) -> str | None:
        """Why speech tokens, prompt and `max_new_tokens` do not fit the LLM's `limit` positions; None if they do."""
        total = speech_tokens + prompt_tokens + max_new_tokens
        if limit is None or total <= limit:
            return None
        return (
            f"too long for this model: {speech_tokens} speech tokens + {prompt_tokens} prompt tokens + max_new_tokens "
            f"{max_new_tokens} = {total} positions, beyond the LLM's {limit}. Split the audio into shorter clips or "
            "lower max_new_tokens."
        )

    def expand_speech_tokens(self, ids: list[int], counts) -> list[int]:
        """Replace each speech placeholder id in `ids` by the next clip's count of speech tokens."""
        expanded = []
        for token in ids:
            if token == self.speech_token_id:
                expanded.extend([token] * next(counts))
            else:
                expanded.append(token)
        return expanded

    def __call__(
        self,
        text: str | list[str] | None = None,
        audio=None,
        images=None,
        videos=None,
        **kwargs: Unpack[BlspProcessorKwargs],
    ) -> BatchFeature:
        """Tokenize rendered prompts and featurise their audio.

        Args:
            text: Prompt(s), each with one speech placeholder per clip (see [`~BlspProcessor.render_prompt`]).
                Prompts are complete strings: no special tokens are added.
            audio: One clip, or a list with one clip per placeholder in reading order: paths, arrays,
                `{"array"|"raw": ..., "sampling_rate": ...}` or `{"path"|"bytes": ...}` dicts.
            images, videos: None (what transformers' pipelines pass); BLSP reads neither.
            sampling_rate: Rate of raw arrays given without one (default: the feature extractor's, 16 kHz).
            text_target: Response(s) to train on; adds `labels` (-100 on prompt, speech and padding; the
                response and EOS are learned).
            return_tensors: `"pt"` (default), `"np"` or None (lists).
            padding: True or `"longest"`, what the processor does: prompts are left-padded to the longest.

        Kwargs are merged as transformers' processors merge them (`text_kwargs=`, `audio_kwargs=`, `common_kwargs=`
        also work); any other is refused with a `TypeError`, never ignored.
        """
        if images is not None or videos is not None:
            raise ValueError("BlspProcessor reads text and audio only, not images or videos.")
        options = self.merge_call_kwargs(kwargs)
        sampling_rate = options["audio_kwargs"].get("sampling_rate")
        text_target, return_tensors = options.get("text_target"), options["text_kwargs"].get("return_tensors", "pt")
        if text is None:
            raise ValueError("BlspProcessor needs `text`: render prompts with `processor.render_prompt(...)`.")
        texts = [text] if isinstance(text, str) else list(text)
        clips = [] if audio is None else (list(audio) if isinstance(audio, (list, tuple)) else [audio])
        placeholders = [sample.count(self.speech_token) for sample in texts]
        if sum(placeholders) != len(clips):
            raise ValueError(
                f"The text has {sum(placeholders)} speech placeholder(s) {self.speech_token!r} but {len(clips)} "
                "audio clip(s) were given: give one clip per placeholder, in order."
            )
        clips = [self.load_audio(clip, sampling_rate) for clip in clips]
        speech_inputs, tokens_per_clip = self.extract_features(clips) if clips else ({}, [])
        rows = [self.prompt_ids(sample) for sample in texts]
        counts = iter(tokens_per_clip)
        rows = [self.expand_speech_tokens(ids, counts) for ids in rows]
        labels = None
        if text_target is not None:
            rows, labels = self.append_targets(rows, [text_target] if isinstance(text_target, str) else text_target)
        batch = self.pad(rows, labels)
        batch.update(speech_inputs)
        return BatchFeature(batch, tensor_type=return_tensors)

    def merge_call_kwargs(self, kwargs: dict) -> dict:
        """`__call__`'s kwargs merged by `ProcessorMixin._merge_kwargs`, after refusing those it would not act on."""
        groups = {**CALL_KWARGS, "common_kwargs": {"return_tensors"}}
        refused = [name for name in kwargs if name not in CALL_NAMES]
        refused += [
            f"{group}[{name!r}]" for group in groups for name in kwargs.get(group) or {} if name not in groups[group]
        ]
        merged = {} if refused else self._merge_kwargs(BlspProcessorKwargs, **kwargs)
        paddings = {merged[group].get("padding", True) for group in CALL_KWARGS} if merged else set()
        refused += [f"padding={padding!r}" for padding in paddings - {True, "longest"}]
        if refused:
            raise TypeError(
                f"BlspProcessor does not take {', '.join(dict.fromkeys(refused))}: it takes text, audio, "
                "sampling_rate, text_target, return_tensors and padding=True (prompts are left-padded to the longest; "
                "the features follow the processor's feature_padding)."
            )
        return merged

    def append_targets(self, rows: list[list[int]], targets: list[str]) -> tuple[list[list[int]], list[list[int]]]:
        """Append each response and EOS to its prompt; labels learn only those tokens."""
        if len(targets) != len(rows):
            raise ValueError(f"Got {len(rows)} prompts but {len(targets)} text_target values.")
        if self.tokenizer.eos_token_id is None:
            raise ValueError("The tokenizer has no EOS token; set `tokenizer.eos_token` to train on responses.")
        target_rows = self.tokenizer(list(targets), add_special_tokens=False)["input_ids"]
        eos = [self.tokenizer.eos_token_id]
        full = [prompt + target + eos for prompt, target in zip(rows, target_rows)]
        labels = [[IGNORE_INDEX] * len(prompt) + target + eos for prompt, target in zip(rows, target_rows)]
        return full, labels

    def pad(self, rows: list[list[int]], labels: list[list[int]] | None) -> dict:
        """Left-pad token rows (and labels with -100) to the longest row."""
        pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        length = max(len(row) for row in rows)
        batch = {
            "input_ids": [[pad_id] * (length - len(row)) + row for row in rows],
            "attention_mask": [[0] * (length - len(row)) + [1] * len(row) for row in rows],
        }
        if labels is not None:
            batch["labels"] = [[IGNORE_INDEX] * (length - len(row)) + row for row in labels]
        return batch

    def read_audio_items(self, conversation: list[dict]) -> list[dict]:
        """`conversation` with every audio item read now and carried as an array: for code whose conversations are
        its own (our pipeline, the app), whose paths and URLs are not a client's."""
        return [
            message
            if isinstance(message["content"], str)
            else {
                **message,
                "content": [
                    {"type": "audio", "array": self.load_audio(flatten_content([item])[1][0])}
                    if item.get("type") == "audio"
                    else item
                    for item in message["content"]
                ],
            }
            for message in conversation
        ]

    def apply_chat_template(
        self,
        conversation: list[dict] | list[list[dict]],
        add_generation_prompt: bool = True,
        tokenize: bool = True,
        return_dict: bool = True,
        continue_final_message: bool = False,
        processor_kwargs: dict | None = None,
        **kwargs,
    ):
        """Render chat conversations whose content may hold `{"type": "audio", "path"|"audio"|"url": ...}` items.

        A conversation is a request: its audio is read only when it carries it (an array, bytes, base64 or a `data:`
        URI) or names a path or URL inside `audio_locations` (the operator's allow-list, default from
        `BLSP_AUDIO_LOCATIONS`: none); `read_audio_items` reads a trusted conversation's files first.

        Chat LLMs use their own chat template; base LLMs BLSP's `###[Human]:...###[Assistant]:` template.
        Returns the prompt string(s) with `tokenize=False`, else the model inputs of `self(text=..., audio=...)` (their
        `input_ids` only with `return_dict=False`). `processor_kwargs` and the kwargs `self(...)` takes go to it; the
        others are the chat template's variables (e.g. `tools`). Continuing a final assistant turn is refused.
        """
        if continue_final_message:
            raise ValueError("BlspProcessor renders a new assistant turn; continue_final_message is not supported.")
        call_kwargs = {**(processor_kwargs or {}), **{key: value for key, value in kwargs.items() if key in CALL_NAMES}}
        template_kwargs = {key: value for key, value in kwargs.items() if key not in CALL_NAMES}
        conversations = [conversation] if isinstance(conversation[0], dict) else conversation
        prompts, audios = [], []
        for messages in conversations:
            flat = []
            for message in messages:
                texts, clips = flatten_content(message["content"])
                if not isinstance(texts, str):
                    texts = join_content(texts, self.speech_token, self.speech_separator)
                flat.append({"role": message["role"], "content": texts})
                audios.extend(clips)
            prompts.append(render_conversation(self.tokenizer, flat, add_generation_prompt, **template_kwargs))
        if not tokenize:
            return prompts[0] if isinstance(conversation[0], dict) else prompts
        audios = [carried_audio(audio, self.audio_locations) for audio in audios]
        inputs = self(text=prompts, audio=audios or None, **call_kwargs)
        return inputs if return_dict else inputs["input_ids"]

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def generation_cue_ids(self) -> list[int]:
        """The tokens that a prompt's generation cue (the assistant turn's opening) adds at its end; [] if none."""
        messages = [{"role": "user", "content": "hello"}]
        with_cue, without = (
            self.prompt_ids(render_conversation(self.tokenizer, messages, cue)) for cue in (True, False)
        )
        return with_cue[len(without) :] if with_cue[: len(without)] == without else []

    def post_process_multimodal_output(
        self, generated_outputs, skip_special_tokens=True, generation_mode=None, **kwargs
    ):
        """Decode `pipeline("any-to-any")`'s rows as our pipeline decodes answers: the text after the prompt's last
        generation cue stripped of surrounding whitespace (a first token such as " the" keeps no leading space), the
        prompt before it as is, so that both doors give the same answers."""
        if generation_mode not in (None, "text"):
            raise ValueError(f"BLSP generates text only, not generation_mode={generation_mode!r}.")
        rows = generated_outputs.tolist() if hasattr(generated_outputs, "tolist") else list(generated_outputs)
        if rows and isinstance(rows[0], int):
            return self.post_process_multimodal_output([rows], skip_special_tokens, **kwargs)[0]
        cue, texts = self.generation_cue_ids(), []
        for row in rows:
            ends = [end for end in range(len(cue), len(row) + 1) if cue and row[end - len(cue) : end] == cue]
            end = ends[-1] if ends else len(row)
            prompt, answer = (self.tokenizer.decode(part, skip_special_tokens=skip_special_tokens, **kwargs)
                              for part in (row[:end], row[end:]))  # fmt: skip
            texts.append(prompt + answer.strip() if ends else prompt)
        return texts

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)


__all__ = [
    "BlspProcessor",
    "CONTINUATION_INSTRUCTION",
    "AudioInputError",
    "load_audio",
    "log_mel",
    "pad_log_mels",
    "render_prompt",
    "render_conversation",
    "tokenize_segments",
    "window_lengths",
]

BlspProcessor.register_for_auto_class()
