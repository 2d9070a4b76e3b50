"""Configuration of BLSP: a frozen Whisper encoder and a frozen LLM joined by a small modality adapter."""

from typing import Literal

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

WHISPER_ENCODER_DOWNSAMPLING = ((3, 2, 1),)
"""(kernel, stride, padding) of the Whisper encoder convolutions that change the frame rate (conv2)."""
ENCODER_PADDINGS = ("longest", "max_length", "unmasked")
IGNORE_INDEX = -100
"""The label of positions that take no loss (prompt, padding, speech placeholders)."""
HUB_KWARGS = ("cache_dir", "force_download", "local_files_only", "revision", "token")
"""`from_pretrained` kwargs that say where and how to fetch a checkpoint's files, passed on to each file it reads."""


def conv_output_length(length, convolutions):
    """Length after a stack of `(kernel, stride, padding)` convolutions: of an int, or of a tensor of lengths."""
    for kernel, stride, padding in convolutions:
        length = (length + 2 * padding - kernel) // stride + 1
    return length


def add_speech_token(tokenizer, speech_token: str) -> int:
    """Register the speech placeholder as a special token of `tokenizer` (once) and return its id."""
    if speech_token not in tokenizer.get_vocab():
        tokenizer.add_tokens([speech_token], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(speech_token)


def check_ctc_decoding(config) -> None:
    """`ctc_beam_size` above 1 chooses the tokens the LLM reads: it needs CTC compression at temperature 0. Checked
    when the config is built and again when the model reads speech (a setting changed after loading)."""
    if config.ctc_beam_size < 1:
        raise ValueError(f"ctc_beam_size must be 1 or more, got {config.ctc_beam_size}.")
    if config.ctc_beam_size > 1 and (config.speech_compression != "ctc" or config.ctc_temperature != 0):
        raise ValueError(
            f"ctc_beam_size={config.ctc_beam_size} chooses the tokens the LLM reads, which needs "
            f'speech_compression="ctc" and ctc_temperature=0 (got {config.speech_compression!r} and '
            f"{config.ctc_temperature}): set ctc_temperature=0 too, or leave ctc_beam_size at 1."
        )


class BlspConfig(PreTrainedConfig):
    r"""
    Configuration of [`BlspForConditionalGeneration`].

    Args:
        speech_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the speech encoder (a Whisper config; only its encoder is used).
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the causal language model (anything `AutoModelForCausalLM` builds).
        adapter_num_conv_layers (`int`, defaults to 3):
            Number of strided `Conv1d` + GLU layers of the adapter's subsampler.
        adapter_conv_kernel_size (`int`, defaults to 5), adapter_conv_stride (`int` or `list[int]`, defaults to 2):
            Kernel and stride of each subsampler convolution (padding is `kernel // 2`); a list gives one stride per
            layer (`[2, 2, 1]`: 4x shorter than Whisper's states, twice the speech tokens of the default 8x).
        adapter_bottleneck_dim (`int`, defaults to 512):
            Width of the adapter's residual bottleneck.
        adapter_layer_norm_eps (`float`, defaults to 1e-5):
            Epsilon of the adapter's final LayerNorm.
        adapter_num_transformer_layers (`int`, defaults to 0):
            Pre-norm self-attention layers after the subsampler (at the speech tokens' rate, the LLM's width), which
            let each speech token see the whole clip. Their output projections start at zero, so layers added to a
            trained adapter start as the identity and training goes on from what it had learned.
        adapter_num_attention_heads (`int`, defaults to 8), adapter_intermediate_size (`int`, *optional*):
            Heads and feed-forward width of those layers (default width: twice the LLM's hidden size).
        adapter_characters (`str`, *optional*), adapter_characters_per_frame (`int`, defaults to 4):
            The characters of an auxiliary CTC head on the adapter's output, trained by the `chars` objective of
            `train_adapter.py` and unused at inference. Each adapter frame predicts `adapter_characters_per_frame`
            character positions, as speech has more characters a second than the adapter has frames.
        speech_token (`str`, defaults to `"<speech>"`), speech_token_id (`int`, *optional*):
            The placeholder that the processor expands into one token per adapter frame.
        encoder_padding (`"longest"`, `"max_length"` or `"unmasked"`, defaults to `"longest"`):
            `"longest"` runs the encoder on the batch's longest clip with padded frames masked;
            `"max_length"` runs it on full 30 s windows with padded frames masked (same outputs, more compute);
            `"unmasked"` runs transformers' `WhisperEncoder` on the feature extractor's 30 s windows with the padding
            attended and cuts each clip's output at its length, as the original BLSP release did (needs a processor
            with `feature_padding="max_length"`; see `docs/original_blsp.md`).
        speech_compression (`"ctc"`, *optional*):
            `"ctc"` reads each adapter frame through the LLM's token embeddings, as the `ctc` training objective does
            (logit of a token: the frame's dot product with its embedding; the blank's: 0): frames read as the blank,
            or as the same token as the frame before, are masked out of the LLM's attention (CTC's greedy collapse),
            and the others enter as the mixture of token embeddings that their softmax weighs. The LLM then reads
            speech much as text. Needs an adapter trained with the `ctc` objective first (see `docs/steps.md`).
        ctc_temperature (`float`, defaults to 1.0):
            With `speech_compression="ctc"`, the temperature of the softmax that weighs each kept frame's mixture of
            token embeddings, a decode-time setting as in LegoSLM (arXiv 2505.11352): 1.0 as the `ctc` and `kl`
            objectives train; lower values weigh each frame's best token more, and 0 enters it as that token's
            embedding alone (the LLM reads the adapter's recognition as text). Override it at load time,
            `from_pretrained(path, ctc_temperature=0.0)`.
        ctc_beam_size (`int`, defaults to 1):
            With `speech_compression="ctc"` at `ctc_temperature=0`, a decode-time setting (eval mode): above 1, each
            clip's tokens are the best of a CTC prefix beam search of this width, its hypotheses rescored by the
            model's own LLM reading each as a text (`ctc_lm_weight`, `ctc_length_bonus`), instead of CTC's greedy
            collapse. The LLM then reads what its own language model finds likelier among what the adapter heard.
        ctc_lm_weight (`float`, defaults to 0.0), ctc_length_bonus (`float`, defaults to 0.0):
            The beam's rescoring: CTC log-probability + `ctc_lm_weight` x the LLM's log-probability of the
            hypothesis (between two `ctc_lm_boundary_token_id`s) + `ctc_length_bonus` per token.
        ctc_lm_boundary_token_id (`int`, *optional*):
            The token that opens and closes each hypothesis the LLM rescores (e.g. the id of "\\n"); defaults to the
            LLM's end-of-sequence token.
        speech_model_name_or_path (`str`, *optional*), text_model_name_or_path (`str`, *optional*):
            The pretrained Whisper and LLM this model was built from (Hub ids or paths), as
            `from_speech_text_pretrained` records them.
        adapter_only (`bool`, defaults to `False`):
            The checkpoint's weights hold only what BLSP trained (the adapter); `from_pretrained` loads the frozen
            bases from `speech_model_name_or_path` and `text_model_name_or_path`, which a load can point elsewhere
            (e.g. at local copies): `from_pretrained(path, speech_model_name_or_path=..., text_model_name_or_path=...)`.
        base_fingerprints (`dict`, *optional*):
            An adapter-only checkpoint's record of its bases' weights, written by `save_pretrained`
            (`{"speech": {dtype: hash}, "text": {dtype: hash}}`, see `bases_blsp.weights_fingerprint`): a load
            refuses bases of other weights unless `check_base_identity=False`. Checkpoints saved before it was
            recorded load unchecked, with a warning.

    Example:

    ```python
    >>> from transformers import AutoConfig
    >>> config = BlspConfig(
    ...     speech_config=AutoConfig.from_pretrained("openai/whisper-small"),
    ...     text_config=AutoConfig.from_pretrained("Qwen/Qwen2.5-7B-Instruct"),
    ... )
    ```
    """

    model_type = "blsp"
    sub_configs_defaults = {
        "speech_config": SubConfigSpec(config_class=AutoConfig, model_type="whisper"),
        "text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama"),
    }

    speech_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    adapter_num_conv_layers: int = 3
    adapter_conv_kernel_size: int = 5
    adapter_conv_stride: int | list[int] = 2
    adapter_bottleneck_dim: int = 512
    adapter_layer_norm_eps: float = 1e-5
    adapter_num_transformer_layers: int = 0
    adapter_num_attention_heads: int = 8
    adapter_intermediate_size: int | None = None
    adapter_characters: str | None = None
    adapter_characters_per_frame: int = 4
    speech_token: str = "<speech>"
    speech_token_id: int | None = None
    encoder_padding: Literal["longest", "max_length", "unmasked"] = "longest"
    speech_compression: Literal["ctc"] | None = None
    ctc_temperature: float = 1.0
    ctc_beam_size: int = 1
    ctc_lm_weight: float = 0.0
    ctc_length_bonus: float = 0.0
    ctc_lm_boundary_token_id: int | None = None
    tie_word_embeddings: bool = False
    speech_model_name_or_path: str | None = None
    text_model_name_or_path: str | None = None
    adapter_only: bool = False
    base_fingerprints: dict | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.encoder_padding not in ENCODER_PADDINGS:
            raise ValueError(f"encoder_padding must be one of {ENCODER_PADDINGS}, got {self.encoder_padding!r}.")
        strides = self.adapter_conv_stride
        if not isinstance(strides, int) and len(strides) != self.adapter_num_conv_layers:
            raise ValueError(
                f"adapter_conv_stride {list(strides)} must give one stride per adapter convolution "
                f"(adapter_num_conv_layers={self.adapter_num_conv_layers}), or one int for all."
            )
        if self.adapter_characters is not None and (
            not self.adapter_characters or len(set(self.adapter_characters)) != len(self.adapter_characters)
        ):
            raise ValueError(f"adapter_characters must be distinct characters, got {self.adapter_characters!r}.")
        if self.adapter_characters_per_frame < 1:
            raise ValueError(f"adapter_characters_per_frame must be 1 or more: {self.adapter_characters_per_frame}.")
        if self.speech_compression not in (None, "ctc"):
            raise ValueError(f"speech_compression must be None or 'ctc', got {self.speech_compression!r}.")
        if self.ctc_temperature < 0:
            raise ValueError(f"ctc_temperature must be 0 or more, got {self.ctc_temperature}.")
        check_ctc_decoding(self)
        if self.adapter_only and not (self.speech_model_name_or_path and self.text_model_name_or_path):
            raise ValueError(
                "An adapter-only BLSP config must name its frozen bases: set speech_model_name_or_path and "
                "text_model_name_or_path (Hub ids or local paths)."
            )
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True

    @property
    def adapter_downsampling(self) -> tuple[tuple[int, int, int], ...]:
        """(kernel, stride, padding) of each adapter convolution."""
        kernel, strides = self.adapter_conv_kernel_size, self.adapter_conv_stride
        strides = [strides] * self.adapter_num_conv_layers if isinstance(strides, int) else strides
        return tuple((kernel, stride, kernel // 2) for stride in strides)

    @property
    def speech_downsampling(self) -> tuple[tuple[int, int, int], ...]:
        """Every convolution between log-mel frames and speech tokens: encoder then adapter."""
        return WHISPER_ENCODER_DOWNSAMPLING + self.adapter_downsampling


def list_among_multimodal_lms() -> None:
    """List the `blsp` model type in transformers' table of multimodal LMs, where `transformers serve` looks.

    `transformers serve` loads a model with `AutoModelForMultimodalLM` (and accepts audio parts for it) only when its
    model type is in `MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES`, a table of transformers' own models; it reads no
    checkpoint's `auto_map`. The model itself still loads from the checkpoint's code, through its `auto_map`.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES

    MODEL_FOR_MULTIMODAL_LM_MAPPING_NAMES.setdefault(BlspConfig.model_type, "BlspForConditionalGeneration")


list_among_multimodal_lms()

__all__ = ["BlspConfig", "add_speech_token", "check_ctc_decoding", "conv_output_length"]
