"""BLSP model: Whisper encoder -> modality adapter (`adapter_blsp`) -> speech embeddings spliced into a causal LLM's
input."""

import os
import shutil
from dataclasses import dataclass

import torch
from torch import nn
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    GenerationMixin,
    PreTrainedModel,
)
from transformers import initialization as init
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.models.whisper.modeling_whisper import WhisperEncoder
from transformers.utils import SAFE_WEIGHTS_NAME, cached_file

try:
    from .adapter_blsp import (
        BlspModalityAdapter,
        clip_of_each_frame,
        ctc_prefix_beam_search,
        ctc_readout,
        encode_unmasked,
        encode_variable_length,
        keep_one_frame_per_clip,
        length_mask,
        pick_hypothesis,
        text_log_probs,
    )
    from .bases_blsp import BASE_MODULES, adapter_weights, base_fingerprints, bases_kwargs, check_bases, load_bases
    from .configuration_blsp import (
        HUB_KWARGS,
        IGNORE_INDEX,
        BlspConfig,
        add_speech_token,
        check_ctc_decoding,
        conv_output_length,
    )
except ImportError:  # imported as a top-level module by this repository's scripts
    from adapter_blsp import (
        BlspModalityAdapter,
        clip_of_each_frame,
        ctc_prefix_beam_search,
        ctc_readout,
        encode_unmasked,
        encode_variable_length,
        keep_one_frame_per_clip,
        length_mask,
        pick_hypothesis,
        text_log_probs,
    )
    from bases_blsp import BASE_MODULES, adapter_weights, base_fingerprints, bases_kwargs, check_bases, load_bases
    from configuration_blsp import (
        HUB_KWARGS,
        IGNORE_INDEX,
        BlspConfig,
        add_speech_token,
        check_ctc_decoding,
        conv_output_length,
    )

PIPELINE_TASK = "blsp-speech-to-text"
PIPELINE_FILE, PIPELINE_CLASS = "pipeline_blsp.py", "pipeline_blsp.BlspPipeline"
"""The custom pipeline that `save_pretrained` writes beside the model (copied from the folder of this file)."""
AUTO_MODEL_CLASSES = ("AutoModel", "AutoModelForMultimodalLM")
"""The auto classes a saved checkpoint maps to `BlspForConditionalGeneration`: `pipeline("any-to-any")` and
`transformers serve` load multimodal LMs with `AutoModelForMultimodalLM`."""


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that count only attended tokens (left padding, frames left out by `speech_compression`)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass
class BlspCausalLMOutputWithPast(CausalLMOutputWithPast):
    """The LLM's outputs, plus, with `speech_compression`, the attention mask without the frames it left out
    (generation carries it to the next steps); None without."""

    attention_mask: torch.Tensor | None = None


class BlspPreTrainedModel(PreTrainedModel):
    config_class = BlspConfig
    base_model_prefix = "model"
    input_modalities = ("audio", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False

    def _init_weights(self, module):
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            init.normal_(module.weight, std=0.02)
            if getattr(module, "zero_init", False):  # the adapter's attention layers start as the identity
                init.zeros_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)


class BlspForConditionalGeneration(BlspPreTrainedModel, GenerationMixin):
    r"""
    BLSP: a Whisper encoder and a causal LLM joined by [`BlspModalityAdapter`].

    The processor expands each speech placeholder into one token per adapter frame; `forward` encodes the speech
    (`input_features`, `input_features_mask`, one row per 30 s window), checks the counts and scatters the speech
    embeddings into the LLM's `inputs_embeds`. In `generate`, speech is encoded once, at prefill.

    Example:

    ```python
    >>> speech, text = "openai/whisper-small", "Qwen/Qwen2.5-7B-Instruct"
    >>> model = BlspForConditionalGeneration.from_speech_text_pretrained(speech, text)
    >>> processor = BlspProcessor.from_speech_text_pretrained(speech, text)
    >>> inputs = processor(text=processor.render_prompt("Transcribe the audio."), audio="speech.flac")
    >>> processor.batch_decode(model.generate(**inputs, max_new_tokens=64), skip_special_tokens=True)
    ```
    """

    def __init__(
        self,
        config: BlspConfig,
        speech_encoder: WhisperEncoder | None = None,
        language_model: PreTrainedModel | None = None,
    ):
        super().__init__(config)
        if config.speech_config.model_type != "whisper":
            raise ValueError(f"BLSP needs a Whisper speech_config, got model_type {config.speech_config.model_type!r}.")
        self.speech_encoder = speech_encoder if speech_encoder is not None else WhisperEncoder(config.speech_config)
        self.adapter = BlspModalityAdapter(config)
        self.language_model = (
            language_model if language_model is not None else AutoModelForCausalLM.from_config(config.text_config)
        )
        self.post_init()

    @classmethod
    def from_speech_text_pretrained(
        cls,
        speech_pretrained_model_name_or_path: str,
        text_pretrained_model_name_or_path: str,
        *,
        freeze_speech_encoder: bool = True,
        freeze_language_model: bool = True,
        speech_kwargs: dict | None = None,
        text_kwargs: dict | None = None,
        dtype: torch.dtype | str | None = None,
        **config_kwargs,
    ) -> "BlspForConditionalGeneration":
        """A new BLSP model from a pretrained Whisper checkpoint (only its encoder is kept) and a pretrained causal LM.

        Both are frozen by default and the adapter is new. `speech_kwargs`/`text_kwargs` go to the two
        `from_pretrained` calls, `dtype` to both; other kwargs set [`BlspConfig`] fields. Without `speech_token_id`,
        the placeholder's id is the one the LLM's tokenizer gives it, as [`BlspProcessor`] registers it.

        Example: `from_speech_text_pretrained("openai/whisper-small", "Qwen/Qwen2.5-7B-Instruct")`.
        """
        speech_encoder, language_model = load_bases(
            speech_pretrained_model_name_or_path, text_pretrained_model_name_or_path, dtype, speech_kwargs, text_kwargs
        )
        config = BlspConfig(
            speech_config=speech_encoder.config,
            text_config=language_model.config,
            speech_model_name_or_path=speech_pretrained_model_name_or_path,
            text_model_name_or_path=text_pretrained_model_name_or_path,
            **config_kwargs,
        )
        if config.speech_token_id is None:  # the id the LLM's tokenizer gives the placeholder, as the processor does
            tokenizer = AutoTokenizer.from_pretrained(text_pretrained_model_name_or_path)
            config.speech_token_id = add_speech_token(tokenizer, config.speech_token)
        model = cls.around_bases(config, speech_encoder, language_model)
        model.generation_config = language_model.generation_config
        model.speech_encoder.requires_grad_(not freeze_speech_encoder)
        model.language_model.requires_grad_(not freeze_language_model)
        return model

    @classmethod
    def around_bases(
        cls, config: BlspConfig, speech_encoder: WhisperEncoder, language_model: PreTrainedModel
    ) -> "BlspForConditionalGeneration":
        """The model around loaded bases (a new adapter), keeping each base's attention implementation.

        The config's sub-configs become the bases' own, as a model built from its config has them: sub-configs that no
        module holds would get their attention implementation "set in the dark", with a warning for each."""
        config.speech_config, config.text_config = speech_encoder.config, language_model.config
        attn_implementation = {
            "speech_config": speech_encoder.config._attn_implementation,
            "text_config": language_model.config._attn_implementation,
        }
        model = cls(config, speech_encoder=speech_encoder, language_model=language_model)
        model.set_attn_implementation(attn_implementation)
        return model

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path,
        *model_args,
        config=None,
        check_base_identity: bool = True,
        speech_kwargs: dict | None = None,
        text_kwargs: dict | None = None,
        **kwargs,
    ):
        """Load a checkpoint; an adapter-only one (`config.adapter_only`) loads its frozen bases by name first.

        Config fields given as kwargs override the saved ones, so `speech_model_name_or_path=` and
        `text_model_name_or_path=` point an adapter-only checkpoint's bases at other copies (e.g. local ones). The
        bases get `dtype`, `device_map`, `token`, `cache_dir`, `local_files_only` and `force_download`, and each its
        `speech_kwargs` / `text_kwargs` (e.g. a base's `revision`: the call's is the checkpoint's own). A base whose
        weights are not those the checkpoint recorded is refused unless `check_base_identity=False`.
        """
        hub_kwargs = {key: kwargs[key] for key in (*HUB_KWARGS, "subfolder") if key in kwargs}
        dtype = {"dtype": kwargs.pop("dtype")} if kwargs.get("dtype") is not None else {}  # not a config field
        if config is None:
            config, kwargs = cls.config_class.from_pretrained(
                pretrained_model_name_or_path, return_unused_kwargs=True, **kwargs
            )
        if config.adapter_only:
            bases, adapter_device = bases_kwargs(hub_kwargs, kwargs.get("device_map"), speech_kwargs, text_kwargs)
            return cls.from_adapter_only(
                pretrained_model_name_or_path, config, hub_kwargs, dtype.get("dtype"), bases, check_base_identity
            ).to_adapter_device(adapter_device)
        output_loading_info = kwargs.pop("output_loading_info", False)
        model, info = super().from_pretrained(
            pretrained_model_name_or_path,
            *model_args,
            config=config,
            output_loading_info=True,
            **{**kwargs, **hub_kwargs, **dtype},
        )
        missing = [key for key in info["missing_keys"] if key.startswith(BASE_MODULES)]
        if missing:
            raise ValueError(
                f"{pretrained_model_name_or_path!r} says adapter_only: false but holds no weights for {len(missing)} "
                f"tensors of its bases (e.g. {', '.join(sorted(missing)[:3])}): they would be random. An adapter-only "
                'checkpoint says "adapter_only": true in its config.json and names its bases in '
                "speech_model_name_or_path and text_model_name_or_path; a full one holds every weight."
            )
        return (model, info) if output_loading_info else model

    @classmethod
    def from_adapter_only(
        cls, path: str, config: BlspConfig, hub_kwargs: dict, dtype=None, bases=({}, {}), check_weights=True
    ):
        """The bases loaded from the ids the config names (`bases`: each one's `from_pretrained` kwargs) and checked to
        be those it was trained on, the trained weights from the checkpoint at `path`."""
        try:
            speech_encoder, language_model = load_bases(
                config.speech_model_name_or_path, config.text_model_name_or_path, dtype, *bases
            )
        except OSError as error:
            raise OSError(
                f"{path!r} holds only BLSP's trained weights; its frozen bases {config.speech_model_name_or_path!r} "
                f"and {config.text_model_name_or_path!r} could not be loaded ({error}). Point "
                "from_pretrained(..., speech_model_name_or_path=..., text_model_name_or_path=...) at copies of them."
            ) from error
        check_bases(config, speech_encoder, language_model, weights=check_weights)
        model = cls.around_bases(config, speech_encoder, language_model)
        state = adapter_weights(cached_file(path, SAFE_WEIGHTS_NAME, **hub_kwargs))
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [key for key in missing if not key.startswith(BASE_MODULES)]
        if missing or unexpected:
            raise ValueError(
                f"{path!r} is not an adapter-only BLSP checkpoint of this model: missing {missing}, unexpected "
                f"{unexpected}."
            )
        try:
            model.generation_config = GenerationConfig.from_pretrained(path, **hub_kwargs)
        except OSError:
            model.generation_config = language_model.generation_config
        return model.eval()

    def to_adapter_device(self, device=None) -> "BlspForConditionalGeneration":
        """The adapter moved to `device`, by default where the encoder's states come out (bases placed by a device
        map); left where it is when they are offloaded."""
        device = device if device is not None else self.speech_encoder.layer_norm.weight.device
        if str(device) != "meta":
            self.adapter.to(device)
        return self

    @torch.no_grad()
    def match_speech_scale_to_embeddings(self) -> float:
        """Scale the adapter's final LayerNorm so that speech embeddings have the norm of the LLM's token embeddings.

        A LayerNorm with unit gain gives rows of norm about sqrt(hidden size) (24 for a 576-wide LLM), often many
        times the LLM's own embeddings (3.2 for SmolLM2-135M): such speech positions dominate the residual stream,
        which the LLM's layers then barely transform. Returns the factor applied.
        """
        embeddings = self.get_input_embeddings().weight
        target = embeddings.float().norm(dim=-1).mean()
        norm = self.adapter.layer_norm
        current = torch.cat([norm.weight, norm.bias]).float().norm()
        factor = float(target / current)
        norm.weight.mul_(factor)
        norm.bias.mul_(factor)
        return factor

    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module):
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module:
        return self.language_model.get_output_embeddings()

    def get_encoder(self, modality: str | None = None) -> nn.Module:
        return self.speech_encoder

    def get_decoder(self) -> nn.Module:
        return self.language_model

    def speech_frame_count(self, frame_lengths: torch.Tensor) -> torch.Tensor:
        """Adapter frames (speech tokens) produced by windows of `frame_lengths` log-mel frames."""
        return conv_output_length(frame_lengths, self.config.speech_downsampling)

    def encode_speech(
        self, input_features: torch.Tensor, input_features_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The speech encoder's states of every window, zero-padded: (windows, frames, hidden), and their lengths.

        Args:
            input_features: (windows, mel bins, frames) log-mel features, zero-padded.
            input_features_mask: (windows, frames) 1 on real frames.
        """
        if input_features.shape[0] != input_features_mask.shape[0]:
            raise ValueError(
                f"input_features holds {input_features.shape[0]} windows but input_features_mask "
                f"{input_features_mask.shape[0]}: a collator that keeps one 30 s window per clip batched them "
                '(pipeline("any-to-any") with batch_size > 1 does). Give clips over 30 s with batch_size=1.'
            )
        frame_lengths = input_features_mask.sum(-1)
        encoder_dtype = self.speech_encoder.conv1.weight.dtype
        if self.config.encoder_padding == "unmasked":
            return encode_unmasked(self.speech_encoder, input_features.to(encoder_dtype), frame_lengths)
        if self.config.encoder_padding == "max_length":
            frames = self.speech_encoder.max_source_positions * self.speech_encoder.conv2.stride[0]
        else:
            frames = int(frame_lengths.max())
        input_features = nn.functional.pad(
            input_features[..., :frames], (0, frames - min(frames, input_features.shape[-1]))
        )
        return encode_variable_length(self.speech_encoder, input_features.to(encoder_dtype), frame_lengths)

    def get_speech_features(
        self,
        input_features: torch.Tensor | None = None,
        input_features_mask: torch.Tensor | None = None,
        speech_encoder_states: torch.Tensor | None = None,
        speech_encoder_lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Speech embeddings of every window, valid frames only, concatenated in order: (num_speech_tokens, hidden).

        From log-mel features (see `encode_speech`), or from the encoder's states computed before
        (`speech_encoder_states`: (windows, frames, hidden) zero-padded, `speech_encoder_lengths`: (windows,)).
        """
        if speech_encoder_states is None:
            speech_encoder_states, speech_encoder_lengths = self.encode_speech(input_features, input_features_mask)
        adapter_dtype = self.adapter.layer_norm.weight.dtype
        speech_embeds, lengths = self.adapter(speech_encoder_states.to(adapter_dtype), speech_encoder_lengths)
        return speech_embeds[length_mask(lengths, speech_embeds.shape[1])]

    def get_placeholder_mask(self, input_ids: torch.Tensor, speech_embeds: torch.Tensor) -> torch.Tensor:
        """Positions of the speech placeholder tokens; checks that there is one per speech embedding."""
        speech_mask = input_ids == self.config.speech_token_id
        num_tokens, num_embeds = int(speech_mask.sum()), speech_embeds.shape[0]
        if num_tokens != num_embeds:
            raise ValueError(
                f"Speech tokens and speech features do not match: the input has {num_tokens} speech tokens but the "
                f"audio gives {num_embeds} adapter frames. Build inputs with BlspProcessor, whose speech_downsampling "
                "must match this model's config."
            )
        return speech_mask

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        input_features: torch.FloatTensor | None = None,
        input_features_mask: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        speech_encoder_states: torch.FloatTensor | None = None,
        speech_encoder_lengths: torch.LongTensor | None = None,
        **kwargs,
    ) -> BlspCausalLMOutputWithPast:
        r"""
        input_features (`torch.FloatTensor` of shape `(windows, mel_bins, frames)`, *optional*):
            Log-mel features of every 30 s window of every clip, from [`BlspProcessor`].
        input_features_mask (`torch.LongTensor` of shape `(windows, frames)`, *optional*):
            1 on real frames, 0 on padding.
        speech_encoder_states (`torch.FloatTensor` of shape `(windows, frames, hidden)`, *optional*):
            The speech encoder's states computed before (e.g. read from step 2's `--encoder_states_dir`), instead of
            `input_features`; `speech_encoder_lengths` gives each window's valid frames.
        labels (`torch.LongTensor`, *optional*):
            Next-token labels, -100 where no loss is taken (prompt, padding). Speech placeholder positions are
            always ignored, so `labels = input_ids` with padding set to -100 works as with LLaVA-style models. Labels
            shorter than the input cover its last positions (with `logits_to_keep`).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Give exactly one of input_ids or inputs_embeds.")
        if input_features is not None and (input_ids is None or input_features_mask is None):
            raise ValueError(
                "input_features need input_ids (whose speech placeholders say where the speech goes) and "
                "input_features_mask: build inputs with BlspProcessor, or pass inputs_embeds with the speech merged."
            )
        if speech_encoder_states is not None and (input_features is not None or speech_encoder_lengths is None):
            raise ValueError(
                "speech_encoder_states replace input_features and need speech_encoder_lengths: give one of the two "
                "speech inputs."
            )
        if inputs_embeds is None:
            inputs_embeds, attention_mask, position_ids = self.merge_speech(
                input_ids,
                input_features,
                input_features_mask,
                attention_mask,
                position_ids,
                speech_encoder_states,
                speech_encoder_lengths,
            )
        if labels is not None and input_ids is not None:
            speech_positions = input_ids[:, -labels.shape[1] :] == self.config.speech_token_id
            labels = labels.masked_fill(speech_positions, IGNORE_INDEX)
        if position_ids is None and attention_mask is not None and attention_mask.ndim == 2:
            position_ids = positions_from_mask(attention_mask)[:, -inputs_embeds.shape[1] :]
        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            labels=labels,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
        compressed_mask = attention_mask if self.config.speech_compression is not None else None
        return BlspCausalLMOutputWithPast(**outputs, attention_mask=compressed_mask)

    def merge_speech(
        self,
        input_ids: torch.LongTensor,
        input_features: torch.FloatTensor | None,
        input_features_mask: torch.LongTensor | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.LongTensor | None,
        speech_encoder_states: torch.FloatTensor | None = None,
        speech_encoder_lengths: torch.LongTensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.LongTensor | None]:
        """The LLM's input embeddings with the speech scattered over its placeholders, and the attention mask and
        position ids that go with them (`speech_compression` leaves frames out of both). The speech comes from
        `input_features`, or from the encoder's states computed before; without either (generation after prefill),
        placeholders embed as token 0: the speech is read from the cache."""
        speech_mask = input_ids == self.config.speech_token_id
        inputs_embeds = self.get_input_embeddings()(input_ids.masked_fill(speech_mask, 0))
        if input_features is None and speech_encoder_states is None:
            return inputs_embeds, attention_mask, position_ids
        speech_embeds = self.get_speech_features(
            input_features, input_features_mask, speech_encoder_states, speech_encoder_lengths
        )
        speech_mask = self.get_placeholder_mask(input_ids, speech_embeds)
        if self.config.speech_compression == "ctc":
            speech_embeds, attention_mask = self.compress_speech(speech_embeds, speech_mask, attention_mask)
            position_ids = positions_from_mask(attention_mask)
        inputs_embeds = inputs_embeds.masked_scatter(
            speech_mask.unsqueeze(-1).to(inputs_embeds.device), speech_embeds.to(inputs_embeds)
        )
        return inputs_embeds, attention_mask, position_ids

    def compress_speech(
        self, speech_embeds: torch.Tensor, speech_mask: torch.Tensor, attention_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`speech_compression="ctc"`: the frames as mixtures of token embeddings, and the attention mask without the
        frames that `read_speech_tokens` leaves out (placeholders stay, so the processor's token counts hold). The
        mixture's softmax runs at `config.ctc_temperature` (0: the token `read_speech_tokens` reads alone)."""
        embeddings = self.get_input_embeddings().weight
        logits = ctc_readout(speech_embeds, embeddings)
        tokens, left_out = self.read_speech_tokens(logits, speech_mask)
        if attention_mask is None:
            attention_mask = torch.ones(speech_mask.shape, dtype=torch.long, device=speech_mask.device)
        temperature = self.config.ctc_temperature
        if temperature == 0:
            mixture = embeddings[tokens]
        else:
            mixture = nn.functional.softmax(logits[:, 1:].float() / temperature, dim=-1).to(embeddings.dtype)
            mixture = mixture @ embeddings
        return mixture, attention_mask.masked_fill(left_out, 0)

    def read_speech_tokens(self, logits: torch.Tensor, speech_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each frame's token (placeholder order) and the (rows, positions) placeholders left out of the LLM's
        attention, from the frames' CTC `logits` (`ctc_readout`).

        CTC's greedy collapse: frames read as the blank, or as the token of the frame before, are left out; the others
        read as their best token. Of a clip read as all blanks, its frame most read as a token stays. In eval mode with
        `config.ctc_beam_size` > 1 (at `ctc_temperature` 0), each clip's tokens are instead the best of its CTC prefix
        beam search rescored by this model's own LLM (`rescorable_hypotheses`, `pick_hypothesis`), each entering at
        the frame it is read at."""
        check_ctc_decoding(self.config)
        tokens = logits[:, 1:].argmax(-1)
        if self.config.ctc_beam_size > 1 and not self.training:
            tokens, left_out = self.beam_search_speech_tokens(logits, speech_mask, tokens)
        else:
            layout = torch.full(speech_mask.shape, -1, dtype=torch.long, device=speech_mask.device)
            layout[speech_mask] = logits.argmax(-1)  # 0: the blank
            previous = nn.functional.pad(layout[:, :-1], (1, 0), value=-1)
            left_out = speech_mask & ((layout == 0) | (layout == previous))
        return tokens, keep_one_frame_per_clip(left_out, speech_mask, logits)

    @torch.no_grad()
    def beam_search_speech_tokens(
        self, logits: torch.Tensor, speech_mask: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`read_speech_tokens` by beam search: every clip (run of placeholders) decoded on its own."""
        log_probs = nn.functional.log_softmax(logits.float(), dim=-1)
        run = clip_of_each_frame(speech_mask)
        kept = torch.zeros(len(run), dtype=torch.bool, device=run.device)
        tokens = tokens.clone()
        for clip in range(int(run.max()) + 1 if len(run) else 0):
            frames = (run == clip).nonzero().squeeze(1)
            hypotheses, language = self.rescorable_hypotheses(log_probs[frames])
            best, emitted, _ = pick_hypothesis(
                hypotheses, language, self.config.ctc_lm_weight, self.config.ctc_length_bonus
            )
            emitted = frames[torch.tensor(emitted, dtype=torch.long, device=frames.device)]
            tokens[emitted] = torch.tensor(best, dtype=tokens.dtype, device=tokens.device)
            kept[emitted] = True
        left_out = speech_mask.clone()
        left_out[speech_mask] = ~kept
        return tokens, left_out

    def rescorable_hypotheses(self, log_probs: torch.Tensor) -> tuple[list[tuple[list[int], list[int], float]], list]:
        """One clip's `ctc_prefix_beam_search` hypotheses (`config.ctc_beam_size` of them) from its frames' CTC
        log-probabilities, and the LLM's log-probability of each as a text of its own, between two
        `ctc_lm_boundary_token_id`s (by default its end-of-sequence token)."""
        hypotheses = ctc_prefix_beam_search(log_probs, self.config.ctc_beam_size)
        boundary = self.config.ctc_lm_boundary_token_id
        if boundary is None:
            boundary = self.language_model.config.eos_token_id
        boundary = boundary[0] if isinstance(boundary, list) else boundary
        return hypotheses, text_log_probs(self.language_model, [tokens for tokens, _, _ in hypotheses], boundary)

    def generate(self, inputs=None, generation_config=None, **kwargs):
        """`GenerationMixin.generate`, refusing a prompt (speech tokens included) that with the tokens to generate
        exceeds the LLM's positions, which it would otherwise answer with nothing or noise, silently (the check of
        `pipeline("any-to-any")` and of `transformers serve`'s `max_tokens`)."""
        prompt = inputs if inputs is not None else kwargs.get("input_ids", kwargs.get("inputs_embeds"))
        limit = getattr(self.config.text_config, "max_position_embeddings", None)
        if prompt is not None and limit is not None:
            config = generation_config or self.generation_config
            length, new_tokens = prompt.shape[1], kwargs.get("max_new_tokens", config.max_new_tokens)
            if new_tokens is None:
                new_tokens = kwargs.get("max_length", config.max_length) - length
            total = length + new_tokens
            if total > limit:
                speech = int((prompt == self.config.speech_token_id).sum(-1).max()) if prompt.dim() == 2 else 0
                raise ValueError(
                    f"The prompt is too long for this model: {length} tokens ({speech} of them speech) + "
                    f"{new_tokens} new tokens = {total} positions, beyond the LLM's {limit}. Split the audio into "
                    "shorter clips or lower max_new_tokens (max_tokens when served)."
                )
        return super().generate(inputs, generation_config, **kwargs)

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, *args, **kwargs):
        """After a prefill with `speech_compression`, later steps attend, and count positions, without the frames
        left out."""
        attention_mask = getattr(outputs, "attention_mask", None)
        if attention_mask is not None:
            model_kwargs["attention_mask"] = attention_mask
            if model_kwargs.get("position_ids") is not None:
                model_kwargs["position_ids"] = positions_from_mask(attention_mask)
        return super()._update_model_kwargs_for_generation(outputs, model_kwargs, *args, **kwargs)

    def prepare_inputs_for_generation(
        self, *args, input_features=None, input_features_mask=None, is_first_iteration=False, **kwargs
    ):
        """Speech is encoded only at prefill: later steps read it from the cache, so they get no `input_features`
        (as Voxtral and AudioFlamingo3 do; without a cache every step reads the whole prompt, speech included)."""
        model_inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        if input_features is not None and (is_first_iteration or not kwargs.get("use_cache", True)):
            model_inputs.update(input_features=input_features, input_features_mask=input_features_mask)
        return model_inputs

    def window_order_by_row(self, input_ids: torch.Tensor, input_features_mask: torch.Tensor) -> list[list[int]]:
        """Indices of the speech windows that belong to each row of `input_ids`, in order."""
        window_tokens = self.speech_frame_count(input_features_mask.sum(-1)).cumsum(0)
        row_tokens = (input_ids == self.config.speech_token_id).sum(-1).cumsum(0)
        row_of_window = torch.searchsorted(row_tokens, window_tokens).tolist()
        return [[window for window, row in enumerate(row_of_window) if row == index] for index in range(len(input_ids))]

    def _expand_inputs_for_generation(self, expand_size=1, is_encoder_decoder=False, input_ids=None, **model_kwargs):
        """Repeat each row's speech windows along with the row (beam search, several return sequences).

        The base class repeats tensors item by item along dim 0, which is wrong for speech windows: a row may own
        several windows (audio over 30 s) or none.
        """
        features = model_kwargs.pop("input_features", None)
        features_mask = model_kwargs.pop("input_features_mask", None)
        if features is not None and expand_size > 1:
            rows = self.window_order_by_row(input_ids, features_mask)
            order = [window for windows in rows for _ in range(expand_size) for window in windows]
            features, features_mask = features[order], features_mask[order]
        expanded_ids, model_kwargs = super()._expand_inputs_for_generation(
            expand_size, is_encoder_decoder, input_ids, **model_kwargs
        )
        if features is not None:
            model_kwargs.update(input_features=features, input_features_mask=features_mask)
        return expanded_ids, model_kwargs

    def save_pretrained(self, save_directory, *args, **kwargs):
        """Save weights and config, the auto classes the model serves and the pipeline that
        `pipeline(model=path, trust_remote_code=True)` finds.

        With `config.adapter_only`, only the weights that are not the frozen bases' are written (the config names
        the bases): the adapter of a 7B model is megabytes, not gigabytes.
        """
        source, target = (
            os.path.join(os.path.dirname(os.path.abspath(__file__)), PIPELINE_FILE),
            os.path.join(os.path.abspath(save_directory), PIPELINE_FILE),
        )
        if not os.path.isfile(source):  # the model's code came from a checkpoint, without the pipeline: its copy
            try:
                source = cached_file(
                    self.config._name_or_path, PIPELINE_FILE, _raise_exceptions_for_missing_entries=False
                )
            except OSError:  # a model built in memory
                source = None
        if source is not None:
            os.makedirs(save_directory, exist_ok=True)
            if source != target:
                shutil.copy(source, target)
            self.config.custom_pipelines = {
                PIPELINE_TASK: {"impl": PIPELINE_CLASS, "pt": ["AutoModel"], "tf": [], "type": "multimodal"}
            }
        model_class = f"{type(self).__module__.rsplit('.', 1)[-1]}.{type(self).__name__}"
        auto_map = getattr(self.config, "auto_map", None) or {}
        self.config.auto_map = {**auto_map, **dict.fromkeys(AUTO_MODEL_CLASSES, model_class)}
        if self.config.adapter_only:  # the bases' fingerprints, which a load checks
            self.config.base_fingerprints = base_fingerprints(self.speech_encoder, self.language_model)
        if self.config.adapter_only and kwargs.get("state_dict") is None:
            kwargs["state_dict"] = {
                name: tensor for name, tensor in self.state_dict().items() if not name.startswith(BASE_MODULES)
            }
        super().save_pretrained(save_directory, *args, **kwargs)


BlspConfig.register_for_auto_class()
BlspForConditionalGeneration.register_for_auto_class("AutoModel")

__all__ = [
    "BlspForConditionalGeneration",
    "BlspModalityAdapter",
    "BlspPreTrainedModel",
    "ctc_prefix_beam_search",
    "ctc_readout",
    "encode_unmasked",
    "encode_variable_length",
]
