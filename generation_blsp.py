"""Step 1's generation backends: `model.generate` on left-padded batches, or vLLM when installed and chosen.

`args` is `generate_continuations.ContinuationArguments` (the LLM, dtype, sampling settings).
"""

import torch
from accelerate import PartialState
from transformers import AutoModelForCausalLM


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`--dtype`: `auto` is bfloat16 on a GPU and float32 on CPU."""
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def until_eos(tokens: list[int], eos_ids: set[int]) -> list[int]:
    """Generated tokens up to and including the first EOS (what follows it is padding)."""
    for index, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[: index + 1]
    return tokens


class TransformersGenerator:
    """`model.generate` on left-padded batches: the checkpoint's generation config, greedy unless `do_sample`."""

    def __init__(self, args, tokenizer, device: torch.device):
        dtype = resolve_dtype(args.dtype, device)
        model = AutoModelForCausalLM.from_pretrained(
            args.llm_name_or_path, dtype=dtype, trust_remote_code=args.trust_remote_code
        )
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        sampling = {"temperature": args.temperature, "top_p": args.top_p} if args.do_sample else {}
        self.generate_kwargs = {
            "max_new_tokens": args.max_new_tokens,
            "do_sample": args.do_sample,
            "num_beams": 1,
            "pad_token_id": tokenizer.pad_token_id,
            **sampling,
        }
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = {tokenizer.eos_token_id} if eos is None else set(eos if isinstance(eos, list) else [eos])

    def generate(self, prompts: list[list[int]]) -> list[list[int]]:
        batch = self.tokenizer.pad({"input_ids": prompts}, return_tensors="pt").to(self.model.device)
        output = self.model.generate(**batch, **self.generate_kwargs)
        new_tokens = output[:, batch["input_ids"].shape[1] :].tolist()
        return [until_eos(tokens, self.eos_ids) for tokens in new_tokens]


class VllmGenerator:
    """vLLM's continuous batching, in one process (imported only when chosen).

    Only `max_new_tokens`, `temperature` and `top_p` are set: other defaults of the checkpoint's generation config
    (e.g. a repetition penalty) are not applied, unlike with `model.generate`.
    """

    def __init__(self, args, tokenizer, device: torch.device):
        from vllm import LLM, SamplingParams

        dtype = str(resolve_dtype(args.dtype, device)).removeprefix("torch.")
        self.llm = LLM(
            model=args.llm_name_or_path, dtype=dtype, seed=args.seed, trust_remote_code=args.trust_remote_code
        )
        self.sampling_params = SamplingParams(
            max_tokens=args.max_new_tokens,
            temperature=args.temperature if args.do_sample else 0.0,
            top_p=args.top_p if args.do_sample else 1.0,
        )
        self.eos_ids = {tokenizer.eos_token_id}

    def generate(self, prompts: list[list[int]]) -> list[list[int]]:
        requests = [{"prompt_token_ids": input_ids} for input_ids in prompts]
        outputs = self.llm.generate(requests, self.sampling_params, use_tqdm=False)
        return [until_eos(list(output.outputs[0].token_ids), self.eos_ids) for output in outputs]


def build_generator(args, tokenizer, state: PartialState):
    if args.backend == "vllm":
        if state.num_processes > 1:
            raise ValueError("--backend vllm batches on its own: run it as one process, without accelerate launch.")
        return VllmGenerator(args, tokenizer, state.device)
    return TransformersGenerator(args, tokenizer, state.device)
