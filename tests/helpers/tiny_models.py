"""Tiny random checkpoints built locally (no Hub access): a Whisper, a base Llama, a chat Qwen2, and chat Mistral,
Gemma 2 and Phi-3 models with their own chat templates."""

import os

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    WhisperConfig,
    WhisperFeatureExtractor,
    WhisperModel,
)

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "please transcribe the following audio into text",
    "continue the following text in a coherent and engaging style with less than 40 words.",
    "translate the following audio into german text",
    "a cat sat on the mat and looked at the bird in the tree",
    "###[Human]: ###[Assistant]: system user assistant you are a helpful assistant",
]
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


# Each family's chat format, simplified from its published template. Gemma's has no system role: it raises.
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}[INST] {{ message['content'] }} "
    "[/INST]{% elif message['role'] == 'system' %}{{ message['content'] }}\n\n{% else %}{{ message['content'] }}"
    "{{ eos_token }}{% endif %}{% endfor %}"
)
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "<start_of_turn>{{ role }}\n{{ message['content'] | trim }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
)
PHI3_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# family: (extra special tokens, bos, eos, chat template)
CHAT_FORMATS = {
    "mistral": (["[INST]", "[/INST]"], "<s>", "</s>", MISTRAL_TEMPLATE),
    "gemma2": (["<start_of_turn>", "<end_of_turn>"], "<s>", "<end_of_turn>", GEMMA_TEMPLATE),
    "phi3": (["<|user|>", "<|assistant|>", "<|system|>", "<|end|>"], None, "<|end|>", PHI3_TEMPLATE),
}


def train_tokenizer(extra_special: list[str], bos: str | None, eos: str, template: str | None):
    """A byte-level BPE tokenizer trained on a few sentences, with the given special tokens and chat template."""
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>"] + extra_special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(CORPUS * 20, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, unk_token="<unk>", bos_token=bos, eos_token=eos, pad_token="<pad>"
    )
    if template is not None:
        wrapped.chat_template = template
    return wrapped


def build_tokenizer(chat: bool) -> PreTrainedTokenizerFast:
    """A base tokenizer (BOS, EOS, no chat template), or a ChatML one when `chat`."""
    if chat:
        return train_tokenizer(["<|im_start|>", "<|im_end|>"], None, "<|im_end|>", CHATML_TEMPLATE)
    return train_tokenizer([], "<s>", "</s>", None)


def tiny_whisper_config(**overrides) -> WhisperConfig:
    settings = dict(
        d_model=32,
        encoder_layers=2,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        num_mel_bins=80,
        vocab_size=100,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=3,
        max_target_positions=32,
        dropout=0.0,
    )
    return WhisperConfig(**{**settings, **overrides})


def save_tiny_whisper(directory: str) -> str:
    WhisperModel(tiny_whisper_config()).save_pretrained(directory)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(directory)
    return directory


def tiny_decoder_settings(tokenizer) -> dict:
    """The config settings every tiny LLM shares: 2 layers of width 32 over `tokenizer`'s vocabulary."""
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def save_tiny_llm(directory: str, chat: bool) -> str:
    """A tiny base Llama (no chat template) or a tiny chat Qwen2 (ChatML template), with its tokenizer."""
    tokenizer = build_tokenizer(chat)
    common = tiny_decoder_settings(tokenizer)
    if chat:
        model = Qwen2ForCausalLM(Qwen2Config(**common, tie_word_embeddings=True))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common, bos_token_id=tokenizer.bos_token_id))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def save_tiny_chat_llm(directory: str, family: str) -> str:
    """A tiny chat model of `family` ("mistral", "gemma2" or "phi3") with its own tokenizer and chat template."""
    tokenizer = train_tokenizer(*CHAT_FORMATS[family])
    common = {**tiny_decoder_settings(tokenizer), "bos_token_id": tokenizer.bos_token_id}
    if family == "mistral":
        model = MistralForCausalLM(MistralConfig(**common))
    elif family == "gemma2":
        config = Gemma2Config(**common, head_dim=8, query_pre_attn_scalar=8, sliding_window=64)
        model = Gemma2ForCausalLM(config)
    else:
        model = Phi3ForCausalLM(Phi3Config(**common))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_tiny_checkpoints(root: str) -> dict[str, str]:
    """Whisper, base Llama and chat Qwen2 checkpoints under `root`; returns their directories."""
    paths = {name: os.path.join(root, name) for name in ("whisper", "llama", "qwen2")}
    save_tiny_whisper(paths["whisper"])
    save_tiny_llm(paths["llama"], chat=False)
    save_tiny_llm(paths["qwen2"], chat=True)
    return paths
