"""BLSP's speech side: the Whisper encoder on clips of any length up to 30 s, the modality adapter that turns its
states into LLM input embeddings, and the adapter's CTC readout through the LLM's token embeddings (greedy, or by a
prefix beam search that the LLM rescores)."""

import math

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.whisper.modeling_whisper import WhisperEncoder

try:
    from .configuration_blsp import BlspConfig, conv_output_length
except ImportError:  # imported as a top-level module by this repository's scripts
    from configuration_blsp import BlspConfig, conv_output_length


def lengths_after_conv(lengths: torch.Tensor, conv: nn.Conv1d) -> torch.Tensor:
    """Valid output lengths of a 1-D convolution for valid input `lengths` (`conv_output_length` of its shape)."""
    return conv_output_length(lengths, [(conv.kernel_size[0], conv.stride[0], conv.padding[0])])


def length_mask(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """Boolean (batch, max_length) mask, True on the first `lengths[i]` positions of row i."""
    return torch.arange(max_length, device=lengths.device)[None, :] < lengths[:, None]


class BlspAdapterTransformerLayer(nn.Module):
    """A pre-norm self-attention + feed-forward layer over the adapter's frames, padded frames masked out.

    `out_proj` and `fc2` are marked `zero_init`: a new layer adds nothing to its input until it is trained."""

    def __init__(self, hidden_size: int, num_heads: int, intermediate_size: int, eps: float):
        super().__init__()
        if hidden_size % num_heads:
            raise ValueError(f"adapter_num_attention_heads ({num_heads}) must divide the LLM's width ({hidden_size}).")
        self.num_heads = num_heads
        self.attention_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.qkv_proj = nn.Linear(hidden_size, 3 * hidden_size)
        self.out_proj = nn.Linear(hidden_size, hidden_size)
        self.feed_forward_norm = nn.LayerNorm(hidden_size, eps=eps)
        self.fc1 = nn.Linear(hidden_size, intermediate_size)
        self.fc2 = nn.Linear(intermediate_size, hidden_size)
        self.out_proj.zero_init = self.fc2.zero_init = True

    def forward(self, hidden_states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(batch, frames, hidden) states and a (batch, frames) mask of valid frames -> the same shape."""
        batch, frames, hidden = hidden_states.shape
        qkv = self.qkv_proj(self.attention_norm(hidden_states)).view(batch, frames, 3, self.num_heads, -1)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)
        attended = nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=mask[:, None, None, :])
        hidden_states = hidden_states + self.out_proj(attended.transpose(1, 2).reshape(batch, frames, hidden))
        feed_forward = self.fc2(nn.functional.gelu(self.fc1(self.feed_forward_norm(hidden_states))))
        return hidden_states + feed_forward


class BlspModalityAdapter(nn.Module):
    """The published BLSP adapter: strided Conv1d + GLU layers (8x shorter), a residual bottleneck, LayerNorm; with
    `adapter_num_transformer_layers`, self-attention layers between the convolutions and the bottleneck.

    Padded frames are zeroed before every convolution and masked out of attention, so a clip's output never depends
    on its batch.
    """

    def __init__(self, config: BlspConfig):
        super().__init__()
        speech_dim, text_dim = config.speech_config.d_model, config.text_config.hidden_size
        layers = config.adapter_downsampling
        self.convs = nn.ModuleList(
            nn.Conv1d(speech_dim, 2 * (text_dim if index == len(layers) - 1 else speech_dim), kernel, stride, padding)
            for index, (kernel, stride, padding) in enumerate(layers)
        )
        width, heads = config.adapter_intermediate_size or 2 * text_dim, config.adapter_num_attention_heads
        self.layers = nn.ModuleList(
            BlspAdapterTransformerLayer(text_dim, heads, width, config.adapter_layer_norm_eps)
            for _ in range(config.adapter_num_transformer_layers)
        )
        self.bottleneck_down = nn.Linear(text_dim, config.adapter_bottleneck_dim, bias=False)
        self.bottleneck_up = nn.Linear(config.adapter_bottleneck_dim, text_dim, bias=False)
        self.layer_norm = nn.LayerNorm(text_dim, eps=config.adapter_layer_norm_eps)
        self.characters_per_frame = config.adapter_characters_per_frame
        self.character_head = None
        if config.adapter_characters:
            self.character_head = nn.Linear(text_dim, self.characters_per_frame * (len(config.adapter_characters) + 1))

    def forward(self, hidden_states: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, frames, speech_dim) encoder states with valid `lengths` -> (batch, tokens, text_dim), lengths."""
        hidden_states = hidden_states.transpose(1, 2)
        for conv in self.convs:
            hidden_states = hidden_states * length_mask(lengths, hidden_states.shape[-1])[:, None, :]
            hidden_states = nn.functional.glu(conv(hidden_states), dim=1)
            lengths = lengths_after_conv(lengths, conv)
        hidden_states = hidden_states.transpose(1, 2)
        for layer in self.layers:
            hidden_states = layer(hidden_states, length_mask(lengths, hidden_states.shape[1]))
        hidden_states = hidden_states + self.bottleneck_up(nn.functional.gelu(self.bottleneck_down(hidden_states)))
        return self.layer_norm(hidden_states), lengths


def character_logits(adapter: BlspModalityAdapter, speech_embeds: torch.Tensor) -> torch.Tensor:
    """(batch, frames, hidden) adapter outputs -> (batch, frames * characters_per_frame, 1 + characters) CTC logits
    of the auxiliary character head (column 0: the blank)."""
    logits = adapter.character_head(speech_embeds)
    return logits.view(*speech_embeds.shape[:-2], speech_embeds.shape[-2] * adapter.characters_per_frame, -1)


def ctc_readout(speech_embeds: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
    """Logits of the blank (column 0, always 0) and of every token (a frame's dot product with its embedding)."""
    logits = speech_embeds @ embeddings.to(speech_embeds.dtype).T
    return torch.cat([logits.new_zeros(*logits.shape[:-1], 1), logits], dim=-1)


CTC_BEAM_TOKENS_PER_FRAME, CTC_BEAM_MIN_LOG_PROB = 8, -8.0
"""The tokens a frame may extend a prefix with in `ctc_prefix_beam_search`: its best 8 other than the blank, each of
log-probability above -8 (the pruning of speech recognisers' beam searches: paths through less are never the best)."""


def _log_add(a: float, b: float) -> float:
    if a == -math.inf or b == -math.inf:
        return max(a, b)
    return max(a, b) + math.log1p(math.exp(-abs(a - b)))


def _add_path(beams: dict, prefix: tuple, frames: tuple, blank: float = -math.inf, token: float = -math.inf):
    """Adds a path's probability of ending in a blank or in the prefix's last token to `beams[prefix]`, whose frames
    are those of its most likely single contribution."""
    if blank == token == -math.inf:  # no path: a repeat right after its token
        return
    entry = beams.setdefault(prefix, [-math.inf, -math.inf, frames, -math.inf])
    entry[0], entry[1] = _log_add(entry[0], blank), _log_add(entry[1], token)
    if max(blank, token) > entry[3]:
        entry[2], entry[3] = frames, max(blank, token)


def ctc_prefix_beam_search(log_probs: torch.Tensor, beam_size: int) -> list[tuple[list[int], list[int], float]]:
    """CTC prefix beam search over one clip's (frames, 1 + vocabulary) log-probabilities (column 0: the blank): the
    `beam_size` best token sequences as (tokens, the frame each token enters at, log-probability summed over all the
    paths that collapse to the tokens), best first. Where paths that enter a token at different frames merge, the
    frames of the likelier contribution stay.

    Written here because the decoders that exist do not fit: pyctcdecode's language models score words, not a
    byte-level BPE vocabulary, and torchaudio's flashlight decoder is a compiled dependency a Hub file cannot assume.
    """
    top = log_probs.float().topk(min(CTC_BEAM_TOKENS_PER_FRAME + 1, log_probs.shape[-1]), dim=-1)
    blanks = log_probs[:, 0].float().tolist()
    # prefix -> [log p ending in a blank, log p ending in its last token, frames, best single contribution]
    beams = {(): [0.0, -math.inf, (), 0.0]}
    for frame, (values, indices) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
        candidates = [
            (index - 1, value) for value, index in zip(values, indices) if index and value > CTC_BEAM_MIN_LOG_PROB
        ]
        extended = {}
        for prefix, (blank, token, frames, _) in beams.items():
            total = _log_add(blank, token)
            _add_path(extended, prefix, frames, blank=total + blanks[frame])
            for candidate, value in candidates:
                if prefix and prefix[-1] == candidate:  # a repeat collapses unless a blank came between
                    _add_path(extended, prefix, frames, token=token + value)
                    _add_path(extended, prefix + (candidate,), frames + (frame,), token=blank + value)
                else:
                    _add_path(extended, prefix + (candidate,), frames + (frame,), token=total + value)
        ranked = sorted(extended.items(), key=lambda item: -_log_add(item[1][0], item[1][1]))
        beams = dict(ranked[:beam_size])
    return [(list(prefix), list(entry[2]), _log_add(entry[0], entry[1])) for prefix, entry in beams.items()]


def pick_hypothesis(
    hypotheses: list[tuple[list[int], list[int], float]],
    language_scores: list[float],
    lm_weight: float,
    length_bonus: float,
) -> tuple[list[int], list[int], float]:
    """The hypothesis of `ctc_prefix_beam_search` with the best CTC log-probability + `lm_weight` x its language
    model's log-probability + `length_bonus` per token (shallow fusion, by n-best rescoring)."""
    scores = [
        ctc + lm_weight * lm + length_bonus * len(tokens) for (tokens, _, ctc), lm in zip(hypotheses, language_scores)
    ]
    return hypotheses[max(range(len(hypotheses)), key=scores.__getitem__)]


@torch.no_grad()
def text_log_probs(language_model: nn.Module, token_lists: list[list[int]], boundary: int) -> list[float]:
    """A causal LM's log-probability of each token list as a text of its own, between two `boundary` tokens."""
    texts = [[boundary, *tokens, boundary] for tokens in token_lists]
    device = next(language_model.parameters()).device
    input_ids = torch.zeros(len(texts), max(map(len, texts)), dtype=torch.long, device=device)
    attention_mask = torch.zeros_like(input_ids)
    for row, text in enumerate(texts):
        input_ids[row, : len(text)] = torch.tensor(text, device=device)
        attention_mask[row, : len(text)] = 1
    logits = language_model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    token_log_probs = logits[:, :-1].log_softmax(-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (token_log_probs * attention_mask[:, 1:]).sum(-1).tolist()


def most_read_frame(logits: torch.Tensor) -> int:
    """Of a clip's frames' CTC logits, the frame whose best token comes nearest the blank (the one a clip read as
    all blanks keeps)."""
    return int((logits[:, 1:].max(-1).values - logits[:, 0]).argmax())


def clip_of_each_frame(speech_mask: torch.Tensor) -> torch.Tensor:
    """The clip (run of speech placeholders, counted over the (rows, positions) mask) of every frame, in placeholder
    order."""
    starts = speech_mask & ~nn.functional.pad(speech_mask[:, :-1], (1, 0), value=False)
    return (starts.flatten().cumsum(0) - 1)[speech_mask.flatten()]


def keep_one_frame_per_clip(left_out: torch.Tensor, speech_mask: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """`left_out` (CTC's greedy collapse over the (rows, positions) `speech_mask`) with, in each run of speech
    placeholders (a clip) that it would leave out whole, the frame most read as a token kept: a clip read as all
    blanks still reaches the LLM, which would otherwise answer as if it had no audio. `logits`: the frames' CTC
    logits, in placeholder order."""
    run = clip_of_each_frame(speech_mask)
    kept = (~left_out.flatten()[speech_mask.flatten()]).long()
    silent = run.new_zeros(int(run.max()) + 1 if len(run) else 0).index_add_(0, run, kept) == 0
    if not silent.any():
        return left_out
    positions = speech_mask.flatten().nonzero().squeeze(1)
    left_out = left_out.clone()
    for index in silent.nonzero().squeeze(1).tolist():
        frames = (run == index).nonzero().squeeze(1)
        left_out.view(-1)[positions[frames[most_read_frame(logits[frames])]]] = False
    return left_out


def encode_variable_length(
    encoder: WhisperEncoder, input_features: torch.Tensor, frame_lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run a Whisper encoder on features of any length up to 30 s, masking padded frames.

    `WhisperEncoder.forward` insists on 3000 frames; this runs the same layers on the given length, slicing the
    positional table, so that a 5 s clip costs 5 s of compute.
    """
    features = input_features * length_mask(frame_lengths, input_features.shape[-1])[:, None, :]
    hidden_states = nn.functional.gelu(encoder.conv1(features))
    hidden_states = hidden_states * length_mask(frame_lengths, hidden_states.shape[-1])[:, None, :]
    hidden_states = nn.functional.gelu(encoder.conv2(hidden_states)).permute(0, 2, 1)
    lengths = lengths_after_conv(frame_lengths, encoder.conv2)
    positions = encoder.embed_positions.weight[: hidden_states.shape[1]]
    hidden_states = hidden_states + positions.to(hidden_states.dtype)
    hidden_states = nn.functional.dropout(hidden_states, p=encoder.dropout, training=encoder.training)
    attention_mask = create_bidirectional_mask(
        config=encoder.config,
        inputs_embeds=hidden_states,
        attention_mask=length_mask(lengths, hidden_states.shape[1]),
    )
    for layer in encoder.layers:
        hidden_states = layer(hidden_states, attention_mask)
    return encoder.layer_norm(hidden_states), lengths


def encode_unmasked(
    encoder: WhisperEncoder, input_features: torch.Tensor, frame_lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Whisper's own encoder on 30 s windows of padded features, the padding attended, as the original BLSP did.

    The output is cut at the longest clip's length; the adapter then masks every clip past its own length.
    """
    window = encoder.max_source_positions * encoder.conv1.stride[0] * encoder.conv2.stride[0]
    longest = int(frame_lengths.max())
    if input_features.shape[-1] != window or (longest < window and not input_features[..., longest:].any()):
        raise ValueError(
            f"encoder_padding='unmasked' needs features padded to 30 s ({window} frames) by the feature extractor, got "
            f"{input_features.shape[-1]} frames, zero-padded past the clips: build inputs with a BlspProcessor whose "
            "feature_padding='max_length'."
        )
    lengths = lengths_after_conv(frame_lengths, encoder.conv2)
    return encoder(input_features).last_hidden_state[:, : int(lengths.max())], lengths


__all__ = [
    "BlspAdapterTransformerLayer",
    "BlspModalityAdapter",
    "character_logits",
    "clip_of_each_frame",
    "ctc_prefix_beam_search",
    "ctc_readout",
    "keep_one_frame_per_clip",
    "most_read_frame",
    "pick_hypothesis",
    "text_log_probs",
    "encode_unmasked",
    "encode_variable_length",
]
