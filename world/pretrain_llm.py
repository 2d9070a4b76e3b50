"""Pretrain the miniature world's LLM: a word-level chat tokenizer and a tiny Llama that follows the four text tasks.

    python -m world.pretrain_llm --output_dir world/models/llm

Training prompts are rendered by `processing_blsp.render_prompt` in both prompt layouts, so the LLM reads exactly
what BLSP will show it. Most training inputs are disfluent copies of the sentence (words said two or three times,
filler words in between): a speech adapter emits a few positions per spoken word and some for pauses, and an LLM
that reads through such input lets what it learned on text transfer to speech. Only train sentences are used;
`evaluate_llm` measures exact-match accuracy on held-out sentences, clean and disfluent.
"""

import argparse
import json
import random
import tempfile

import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers
from transformers import (
    DataCollatorForSeq2Seq,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Trainer,
    TrainingArguments,
)

from configuration_blsp import IGNORE_INDEX
from processing_blsp import PROMPT_LAYOUTS, render_prompt
from world.language import INSTRUCTIONS, Sentence, response, sentences_by_template, split_sentences, vocabulary

UNK, PAD, IM_START, IM_END = "<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"
CHAT_ROLES = ("system", "user", "assistant")
FILLER_WORDS = ("uh", "um", "er", "hm")
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
MODEL_CONFIG = dict(
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    tie_word_embeddings=True,
)
REPEAT_COUNT_WEIGHTS = (0.5, 0.3, 0.2)
"""Probabilities that a word of a disfluent input is said once, twice or three times."""
FILLER_PROBABILITY = 0.3
"""Probability of filler words before each word and after the last one in a disfluent input."""


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level, lower-casing tokenizer over the world's words with ChatML special tokens and chat template."""
    words = [word for kind in vocabulary().values() for word in kind] + list(FILLER_WORDS) + list(CHAT_ROLES)
    vocab = {UNK: 0}
    for word in words:
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece(cleanup=True)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token=UNK, pad_token=PAD, eos_token=IM_END)
    wrapped.add_special_tokens({"additional_special_tokens": [IM_START]})
    wrapped.chat_template = CHATML_TEMPLATE
    return wrapped


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **MODEL_CONFIG,
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, do_sample=False
    )
    return model


def disfluent(text: str, rng: random.Random) -> str:
    """`text` with every word said one to three times and filler words scattered in between."""
    words = []
    for word in text.split() + [None]:
        if rng.random() < FILLER_PROBABILITY:
            words.extend(rng.choices(FILLER_WORDS, k=rng.randint(1, 2)))
        if word is not None:
            words.extend([word] * rng.choices((1, 2, 3), REPEAT_COUNT_WEIGHTS)[0])
    return " ".join(words)


def tokenize_example(tokenizer, prompt: str, target: str) -> dict:
    """Prompt + target + EOS as one row; labels learn only the target and EOS."""
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return {"input_ids": prompt_ids + target_ids, "labels": [IGNORE_INDEX] * len(prompt_ids) + target_ids}


def training_examples(tokenizer, num_examples: int, disfluent_fraction: float, seed: int) -> Dataset:
    """Random (template, train sentence, task, layout) examples; `disfluent_fraction` with a disfluent input.

    Templates are drawn uniformly, so the rare ones (a few dozen sentences) are learned as well as the others.
    """
    rng = random.Random(seed)
    by_template = sentences_by_template("train")
    rows = []
    for _ in range(num_examples):
        sentence = rng.choice(by_template[rng.choice(list(by_template))])
        task, layout = rng.choice(list(INSTRUCTIONS)), rng.choice(PROMPT_LAYOUTS)
        content = disfluent(sentence.text, rng) if rng.random() < disfluent_fraction else sentence.text
        prompt = render_prompt(tokenizer, INSTRUCTIONS[task], content, layout)
        rows.append(tokenize_example(tokenizer, prompt, response(task, sentence)))
    return Dataset.from_list(rows)


def train(model, tokenizer, dataset: Dataset, args: argparse.Namespace):
    """Train every weight of `model` on `dataset` with Trainer (no checkpoints written)."""
    with tempfile.TemporaryDirectory() as scratch:
        training_args = TrainingArguments(
            output_dir=scratch,
            per_device_train_batch_size=args.batch_size,
            num_train_epochs=1,
            learning_rate=args.learning_rate,
            weight_decay=0.01,
            warmup_steps=args.warmup_steps,
            lr_scheduler_type="cosine",
            logging_steps=50,
            save_strategy="no",
            report_to="none",
            seed=args.seed,
            use_cpu=True,
        )
        collator = DataCollatorForSeq2Seq(tokenizer, label_pad_token_id=IGNORE_INDEX)
        Trainer(model=model, args=training_args, train_dataset=dataset, data_collator=collator).train()


@torch.no_grad()
def greedy_responses(
    model, tokenizer, prompts: list[str], batch_size: int = 256, max_new_tokens: int = 24
) -> list[str]:
    """Greedy responses to rendered prompts, decoded without special tokens."""
    model.eval()
    responses = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        inputs = tokenizer(batch, add_special_tokens=False, padding=True, padding_side="left", return_tensors="pt")
        output = model.generate(**inputs, do_sample=False, max_new_tokens=max_new_tokens)
        responses += tokenizer.batch_decode(output[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return [text.strip() for text in responses]


def task_accuracies(model, tokenizer, sentences: list[Sentence], disfluent_seed: int | None = None) -> dict:
    """Exact-match accuracy of every task in every layout; inputs disfluent when `disfluent_seed` is given."""
    rng = random.Random(disfluent_seed)
    contents = [s.text if disfluent_seed is None else disfluent(s.text, rng) for s in sentences]
    accuracies = {}
    for task, instruction in INSTRUCTIONS.items():
        for layout in PROMPT_LAYOUTS:
            prompts = [render_prompt(tokenizer, instruction, content, layout) for content in contents]
            outputs = greedy_responses(model, tokenizer, prompts)
            correct = sum(out == response(task, s) for out, s in zip(outputs, sentences))
            accuracies[f"{task}/{layout}"] = round(correct / len(sentences), 4)
    return accuracies


def evaluate_llm(model, tokenizer, seed: int = 0) -> dict:
    """Task accuracies on held-out sentences (clean and disfluent) and on as many train sentences (clean)."""
    held_out = split_sentences("held_out")
    train_sample = random.Random(seed).sample(split_sentences("train"), len(held_out))
    return {
        "held_out": task_accuracies(model, tokenizer, held_out),
        "held_out_disfluent": task_accuracies(model, tokenizer, held_out, disfluent_seed=seed),
        "train": task_accuracies(model, tokenizer, train_sample),
    }


def pretrain_llm(args: argparse.Namespace) -> dict:
    """Build, train, save and evaluate the LLM; returns the settings and accuracies for the manifest."""
    torch.set_num_threads(args.threads)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, args.seed)
    dataset = training_examples(tokenizer, args.num_examples, args.disfluent_fraction, args.seed)
    train(model, tokenizer, dataset, args)
    model.save_pretrained(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)
    settings = {key: value for key, value in vars(args).items() if key not in ("output_dir", "threads")}
    return {
        "settings": {**settings, "model": MODEL_CONFIG},
        "tokenizer_vocabulary": tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))),
        "parameters": model.num_parameters(),
        "accuracy": evaluate_llm(model, tokenizer, args.seed),
    }


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="world/models/llm")
    parser.add_argument("--num_examples", type=int, default=83200, help="Training rows (one epoch).")
    parser.add_argument("--disfluent_fraction", type=float, default=0.6)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=3e-3)
    parser.add_argument("--warmup_steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch (at most the free cores).")
    return parser


def main():
    print(json.dumps(pretrain_llm(argument_parser().parse_args()), indent=2))


if __name__ == "__main__":
    main()
