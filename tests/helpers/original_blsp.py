"""The original BLSP release (cwang621/blsp) in miniature, and a reference of its forward written from its code.

`save_tiny_original_blsp` writes a folder laid out as transformers 4.31's `Trainer.save_model` wrote the released
checkpoint: `config.json` with 4.31-style `whisper_config`/`llama_config` dicts and no `model_type`, original weight
names in `.bin` pickles (optionally sharded with an index), a Llama sentencepiece tokenizer with byte fallback trained
on a few lines, and a `WhisperFeatureExtractor`. `OriginalBlsp` re-implements `blsp/src/modeling_blsp.py`,
`modeling_whisper_encoder.py` and `generate.py` with transformers' `WhisperEncoder` and `LlamaForCausalLM` (as the
original imports them) and the `sentencepiece` library for its `LlamaTokenizer`; it shares no code with this
repository's model, processor or converter.
"""

import io
import json
import math
import os

import sentencepiece
import torch
from torch import nn
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, WhisperConfig, WhisperFeatureExtractor
from transformers.models.whisper.modeling_whisper import WhisperEncoder

SENTENCES = [
    "###[Human]:Please transcribe the following audio.",
    "###[Assistant]:the quick brown fox jumps over the lazy dog",
    "Please translate the following audio into German text.",
    "a cat sat on the mat and looked at the bird in the tree",
]
# PretrainedConfig.to_dict() of transformers 4.31 writes every generic attribute into each sub-config dict.
LEGACY_CONFIG_FIELDS = {
    "return_dict": True, "output_hidden_states": False, "output_attentions": False, "torchscript": False,
    "torch_dtype": "float16", "use_bfloat16": False, "tf_legacy_loss": False, "pruned_heads": {},
    "tie_word_embeddings": False, "is_encoder_decoder": False, "is_decoder": False, "cross_attention_hidden_size": None,
    "add_cross_attention": False, "tie_encoder_decoder": False, "max_length": 20, "min_length": 0, "do_sample": False,
    "early_stopping": False, "num_beams": 1, "num_beam_groups": 1, "diversity_penalty": 0.0, "temperature": 1.0,
    "top_k": 50, "top_p": 1.0, "typical_p": 1.0, "repetition_penalty": 1.0, "length_penalty": 1.0,
    "no_repeat_ngram_size": 0, "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "num_return_sequences": 1,
    "chunk_size_feed_forward": 0, "output_scores": False, "return_dict_in_generate": False,
    "forced_bos_token_id": None, "forced_eos_token_id": None, "remove_invalid_values": False,
    "exponential_decay_length_penalty": None, "suppress_tokens": None, "begin_suppress_tokens": None,
    "finetuning_task": None, "id2label": {"0": "LABEL_0", "1": "LABEL_1"}, "label2id": {"LABEL_0": 0, "LABEL_1": 1},
    "tokenizer_class": None, "prefix": None, "sep_token_id": None, "task_specific_params": None,
    "problem_type": None, "_name_or_path": "", "transformers_version": "4.31.0",
}  # fmt: skip
WHISPER_SMALL_SHAPE = dict(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64)
LLAMA_SHAPE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def train_llama_sentencepiece() -> bytes:
    """A sentencepiece BPE model trained the way Llama's was (byte fallback, identity normalisation, dummy prefix)."""
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 10),
        model_writer=model,
        vocab_size=340,
        model_type="bpe",
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        minloglevel=2,
    )
    return model.getvalue()


def added_token(content: str) -> dict:
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True, "rstrip": False}


def save_llama_tokenizer(directory: str) -> int:
    """The files 4.31's `LlamaTokenizer.save_pretrained` writes; returns the vocabulary size."""
    model = train_llama_sentencepiece()
    with open(os.path.join(directory, "tokenizer.model"), "wb") as file:
        file.write(model)
    special = {"bos_token": added_token("<s>"), "eos_token": added_token("</s>"), "unk_token": added_token("<unk>")}
    tokenizer_config = {
        **special,
        "add_bos_token": True,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "legacy": False,
        "model_max_length": 1000000000000000019884624838656,
        "pad_token": None,
        "padding_side": "right",
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizer",
    }
    for name, content in (("tokenizer_config.json", tokenizer_config), ("special_tokens_map.json", special)):
        with open(os.path.join(directory, name), "w") as file:
            json.dump(content, file, indent=2)
    return sentencepiece.SentencePieceProcessor(model_proto=model).get_piece_size()


def original_config(vocab_size: int) -> dict:
    """The original `config.json`: 4.31-style sub-config dicts, the adapter settings, no `model_type`."""
    whisper = WhisperConfig(**WHISPER_SMALL_SHAPE, num_mel_bins=80, dropout=0.0).to_dict()
    llama = LlamaConfig(
        **LLAMA_SHAPE, vocab_size=vocab_size, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2
    ).to_dict()
    llama.update(pretraining_tp=1, rope_scaling=None, architectures=["LlamaForCausalLM"])
    for settings in (whisper, llama):
        for key in ("dtype", "rope_parameters", "output_attentions", "output_hidden_states"):
            settings.pop(key, None)
        settings.update({key: value for key, value in LEGACY_CONFIG_FIELDS.items() if key not in settings})
    return {
        "adapter_inner_dim": 16,
        "architectures": ["BlspModel"],
        "conv_kernel_sizes": "5,5,5",
        "llama_config": llama,
        "torch_dtype": "float32",
        "transformers_version": "4.31.0",
        "whisper_config": whisper,
    }


class Conv1dSubsampler(nn.Module):
    """blsp/src/modeling_blsp.py: strided Conv1d + GLU layers, no mask."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, kernel_sizes: list[int]):
        super().__init__()
        self.conv_layers = nn.ModuleList(
            nn.Conv1d(
                in_channels if i == 0 else mid_channels // 2,
                mid_channels if i < len(kernel_sizes) - 1 else out_channels * 2,
                k,
                stride=2,
                padding=k // 2,
            )
            for i, k in enumerate(kernel_sizes)
        )

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.transpose(1, 2)
        for conv in self.conv_layers:
            x = nn.functional.glu(conv(x), dim=1)
            lengths = ((lengths.float() - 1) / 2 + 1).floor().long()
        return x.transpose(1, 2), lengths


class Adapter(nn.Module):
    """blsp/src/modeling_blsp.py: residual bottleneck."""

    def __init__(self, in_dim: int, mid_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, mid_dim, bias=False)
        self.fc2 = nn.Linear(mid_dim, in_dim, bias=False)
        self.activation = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.activation(self.fc1(x)))


class OriginalBlsp(nn.Module):
    """`BlspModel` of the original release, its attribute names (so its state dict is the release's layout)."""

    def __init__(self, config: dict):
        super().__init__()
        self.whisper_config = WhisperConfig(**config["whisper_config"])
        self.llama_config = LlamaConfig(**config["llama_config"])
        self.whisper_model = WhisperEncoder(self.whisper_config)
        self.llama_model = LlamaForCausalLM(self.llama_config)
        in_d, out_d = self.whisper_config.d_model, self.llama_config.hidden_size
        kernels = [int(k) for k in config["conv_kernel_sizes"].split(",")]
        self.subsampler = Conv1dSubsampler(in_d, 2 * in_d, out_d, kernels)
        self.speech_ln = nn.LayerNorm(out_d, 1e-5, True)
        self.adapter = Adapter(out_d, config["adapter_inner_dim"])

    @classmethod
    def from_original(cls, directory: str) -> "OriginalBlsp":
        """The release in `directory`: its config, every weight (strictly), its tokenizer and feature extractor."""
        with open(os.path.join(directory, "config.json")) as file:
            model = cls(json.load(file))
        index = os.path.join(directory, "pytorch_model.bin.index.json")
        files = ["pytorch_model.bin"]
        if os.path.exists(index):
            with open(index) as file:
                files = sorted(set(json.load(file)["weight_map"].values()))
        state = {}
        for name in files:
            state.update(torch.load(os.path.join(directory, name), weights_only=True))
        state = {name: tensor for name, tensor in state.items() if not name.endswith("rotary_emb.inv_freq")}
        model.load_state_dict(state, strict=True)
        model.sentencepiece = sentencepiece.SentencePieceProcessor(
            model_file=os.path.join(directory, "tokenizer.model")
        )
        model.extractor = WhisperFeatureExtractor.from_pretrained(directory)
        return model.eval()

    def get_speech_features(self, speech_values: torch.Tensor, speech_attention_mask: torch.Tensor) -> torch.Tensor:
        """WhisperEncoder on the 30 s features (mask unused), cut to the longest output length, subsampler, adapter."""
        speech_embeds = self.whisper_model(speech_values).last_hidden_state
        output_lengths = self.whisper_model._get_feat_extract_output_lengths(speech_attention_mask.sum(-1))
        speech_embeds, _ = self.subsampler(speech_embeds[:, : output_lengths.max()], output_lengths)
        return self.speech_ln(self.adapter(speech_embeds))

    def prompt_ids(self, instruction: str) -> tuple[list[int], list[int]]:
        """generate.py: `tokenizer(f"###[Human]:{instruction}")` (with BOS) and the suffix's ids with BOS dropped."""
        bos = self.sentencepiece.bos_id()
        prefix = [bos] + self.sentencepiece.encode(f"###[Human]:{instruction}")
        suffix = ([bos] + self.sentencepiece.encode("\n\n\n###[Assistant]:"))[1:]
        return prefix, suffix

    def inputs_embeds(self, instruction: str, clip) -> tuple[torch.Tensor, int]:
        """The prompt's embeddings for one clip (generate.py runs one example at a time) and its speech length."""
        prefix, suffix = self.prompt_ids(instruction)
        speech = self.extractor(clip, sampling_rate=16000, return_attention_mask=True, return_tensors="pt")
        speech_embeds = self.get_speech_features(speech.input_features, speech.attention_mask)
        embed = self.llama_model.get_input_embeddings()
        pieces = [embed(torch.tensor([prefix])), speech_embeds, embed(torch.tensor([suffix]))]
        return torch.cat(pieces, dim=1), speech_embeds.shape[1]

    @torch.no_grad()
    def logits(self, instruction: str, clip) -> torch.Tensor:
        return self.llama_model(inputs_embeds=self.inputs_embeds(instruction, clip)[0]).logits[0]

    @torch.no_grad()
    def generate(self, instruction: str, clip, max_new_tokens: int = 128) -> list[int]:
        """generate.py's greedy decoding: 128 new tokens at most, at least one."""
        inputs_embeds, _ = self.inputs_embeds(instruction, clip)
        config = GenerationConfig(
            max_new_tokens=max_new_tokens, min_new_tokens=1, do_sample=False, bos_token_id=1, eos_token_id=2
        )
        attention_mask = torch.ones(inputs_embeds.shape[:2], dtype=torch.long)
        config.pad_token_id = config.eos_token_id
        output = self.llama_model.generate(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, generation_config=config
        )
        return output[0].tolist()


def save_original_weights(state: dict[str, torch.Tensor], directory: str, shards: int) -> None:
    """`pytorch_model.bin`, or `shards` files and the index `save_pretrained` writes."""
    if shards == 1:
        torch.save(state, os.path.join(directory, "pytorch_model.bin"))
        return
    names, weight_map = list(state), {}
    size = math.ceil(len(names) / shards)
    for index in range(shards):
        file_name = f"pytorch_model-{index + 1:05d}-of-{shards:05d}.bin"
        torch.save(
            {name: state[name] for name in names[index * size : (index + 1) * size]}, os.path.join(directory, file_name)
        )
        weight_map.update(dict.fromkeys(names[index * size : (index + 1) * size], file_name))
    total_size = sum(tensor.numel() * tensor.element_size() for tensor in state.values())
    with open(os.path.join(directory, "pytorch_model.bin.index.json"), "w") as file:
        json.dump({"metadata": {"total_size": total_size}, "weight_map": weight_map}, file, indent=2)


def save_tiny_original_blsp(directory: str, shards: int = 1, seed: int = 0) -> str:
    """A tiny original-layout BLSP release with random weights, scaled up so that speech and text change the output.

    With `shards > 1` the weights are split over shards with an index, and the saved Llama rotary buffers that older
    Llama checkpoints carry are included.
    """
    os.makedirs(directory, exist_ok=True)
    config = original_config(save_llama_tokenizer(directory))
    with open(os.path.join(directory, "config.json"), "w") as file:
        json.dump(config, file, indent=2)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(directory)
    torch.manual_seed(seed)
    model = OriginalBlsp(config)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "embed_positions" not in name:
                fan_in = parameter[0].numel() if parameter.ndim > 1 else 100
                parameter.normal_(0.0, fan_in**-0.5)
                if name.endswith(("norm.weight", "ln.weight")):
                    parameter.add_(1.0)
    state = model.state_dict()
    if shards > 1:
        rotary = model.llama_model.model.rotary_emb.inv_freq
        for layer in range(model.llama_config.num_hidden_layers):
            state[f"llama_model.model.layers.{layer}.self_attn.rotary_emb.inv_freq"] = rotary.clone()
    save_original_weights(state, directory, shards)
    return directory
