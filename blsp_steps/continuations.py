"""Step 1's generation backends: `model.generate` on left-padded batches, or vLLM when installed and chosen; the
check that prompts and continuations fit the LLM; the cached teacher as part records and Arrow columns.

`args` is `generate_continuations.ContinuationArguments` (the LLM, dtype, sampling settings). With
`args.teacher_top_k` K > 0, each backend also returns the LLM's K most likely next tokens and their log-probabilities
at temperature `args.teacher_temperature` (log-softmax of the raw logits divided by it, before any sampling processor)
at every position that predicts a continuation token or the end of the continuation: the teacher of step 2's KL
objective, cached.
"""

import base64

import numpy as np
import pyarrow as pa
import torch
from accelerate import PartialState
from transformers import AutoConfig, AutoModelForCausalLM

from .corpora import CONTINUATION, TEACHER_IDS, TEACHER_LOGPROBS


def until_eos(tokens: list[int], eos_ids: set[int]) -> list[int]:
    """Generated tokens up to and including the first EOS (what follows it is padding)."""
    for index, token in enumerate(tokens):
        if token in eos_ids:
            return tokens[: index + 1]
    return tokens


def top_k_logprobs(logits: torch.Tensor, k: int, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """(..., vocab) logits -> the top-k token ids (int32) and their log-probabilities at `temperature` (float16), most
    likely first."""
    values, ids = torch.topk(torch.log_softmax(logits.float() / temperature, dim=-1), k, dim=-1)
    return ids.to(torch.int32).cpu().numpy(), values.to(torch.float16).cpu().numpy()


def teacher_positions(tokens: list[int], eos_ids: set[int]) -> int:
    """Positions with a cached teacher: one per continuation token and one for the end (the EOS step 2 appends)."""
    return len(tokens) + (0 if tokens and tokens[-1] in eos_ids else 1)


class TransformersGenerator:
    """`model.generate` on left-padded batches: the checkpoint's generation config, greedy unless `do_sample`."""

    def __init__(self, args, tokenizer, device: torch.device):
        model = AutoModelForCausalLM.from_pretrained(
            args.llm_name_or_path, dtype=args.dtype, trust_remote_code=args.trust_remote_code
        )
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        sampling = {"temperature": args.temperature, "top_p": args.top_p} if args.do_sample else {}
        self.max_new_tokens, self.top_k, self.temperature = (
            args.max_new_tokens,
            args.teacher_top_k,
            args.teacher_temperature,
        )
        # One step more than kept: a continuation cut at max_new_tokens has a teacher at its end position too.
        teacher = {"output_logits": True, "return_dict_in_generate": True} if self.top_k else {}
        self.generate_kwargs = {
            "max_new_tokens": args.max_new_tokens + (1 if self.top_k else 0),
            **teacher,
            "do_sample": args.do_sample,
            "num_beams": 1,
            "pad_token_id": tokenizer.pad_token_id,
            **sampling,
        }
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = {tokenizer.eos_token_id} if eos is None else set(eos if isinstance(eos, list) else [eos])

    def generate(self, prompts: list[list[int]]) -> tuple[list[list[int]], list | None]:
        """Each prompt's new tokens up to EOS, and (with `teacher_top_k`) each row's top-k (ids, log-probs) arrays of
        shape (positions, k), else None."""
        batch = self.tokenizer.pad({"input_ids": prompts}, return_tensors="pt").to(self.model.device)
        output = self.model.generate(**batch, **self.generate_kwargs)
        sequences = output.sequences if self.top_k else output
        new_tokens = sequences[:, batch["input_ids"].shape[1] :].tolist()
        outputs = [until_eos(tokens[: self.max_new_tokens], self.eos_ids) for tokens in new_tokens]
        if not self.top_k:
            return outputs, None
        ids, logprobs = zip(
            *(top_k_logprobs(step_logits, self.top_k, self.temperature) for step_logits in output.logits)
        )
        ids, logprobs = np.stack(ids, axis=1), np.stack(logprobs, axis=1)  # (rows, steps, k)
        positions = [teacher_positions(tokens, self.eos_ids) for tokens in outputs]
        return outputs, [(ids[row, :count], logprobs[row, :count]) for row, count in enumerate(positions)]

    @torch.no_grad()
    def score(self, prompts: list[list[int]], targets: list[list[int]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """The top-k (ids, log-probs) at the positions predicting each target token and the end after it (teacher
        forcing, one forward)."""
        rows = [prompt + target for prompt, target in zip(prompts, targets)]
        batch = self.tokenizer.pad({"input_ids": rows}, return_tensors="pt").to(self.model.device)
        logits = self.model(**batch).logits
        ids, logprobs = top_k_logprobs(logits, self.top_k, self.temperature)
        return [(ids[row, -len(target) - 1 :], logprobs[row, -len(target) - 1 :]) for row, target in enumerate(targets)]


class VllmGenerator:
    """vLLM's continuous batching, in one process (imported only when chosen).

    The cached teacher (`teacher_top_k`) comes from vLLM's log-probabilities of the raw logits (temperature 1 only);
    this path is written to vLLM's API but untested here (no vLLM on the development machine).

    Only `max_new_tokens`, `temperature` and `top_p` are set: other defaults of the checkpoint's generation config
    (e.g. a repetition penalty) are not applied, unlike with `model.generate`.
    """

    def __init__(self, args, tokenizer, device: torch.device):
        from vllm import LLM, SamplingParams

        self.llm = LLM(
            model=args.llm_name_or_path, dtype=args.dtype, seed=args.seed, trust_remote_code=args.trust_remote_code
        )
        self.max_new_tokens, self.top_k = args.max_new_tokens, args.teacher_top_k
        # With a cached teacher: one step more than kept, and vLLM's top-k log-probs of the raw logits.
        self.sampling_params = SamplingParams(
            max_tokens=args.max_new_tokens + (1 if self.top_k else 0),
            temperature=args.temperature if args.do_sample else 0.0,
            top_p=args.top_p if args.do_sample else 1.0,
            logprobs=self.top_k or None,
        )
        self.eos_ids = {tokenizer.eos_token_id}

    def top_k_arrays(self, steps: list[dict]) -> tuple[np.ndarray, np.ndarray]:
        """vLLM's per-position {token id: Logprob} dicts (the k best, plus the chosen token) as (positions, k)
        arrays in rank order."""
        best = [sorted(step.items(), key=lambda item: item[1].rank)[: self.top_k] for step in steps]
        ids = np.array([[token for token, _ in step] for step in best], dtype=np.int32)
        logprobs = np.array([[value.logprob for _, value in step] for step in best], dtype=np.float16)
        return ids, logprobs

    def generate(self, prompts: list[list[int]]) -> tuple[list[list[int]], list | None]:
        requests = [{"prompt_token_ids": input_ids} for input_ids in prompts]
        results = [output.outputs[0] for output in self.llm.generate(requests, self.sampling_params, use_tqdm=False)]
        outputs = [until_eos(list(result.token_ids)[: self.max_new_tokens], self.eos_ids) for result in results]
        if not self.top_k:
            return outputs, None
        positions = [teacher_positions(tokens, self.eos_ids) for tokens in outputs]
        return outputs, [self.top_k_arrays(result.logprobs[:count]) for result, count in zip(results, positions)]

    def score(self, prompts: list[list[int]], targets: list[list[int]]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Teacher forcing through vLLM: the prompt log-probs of each target token, and the next token's."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=self.top_k, prompt_logprobs=self.top_k)
        requests = [{"prompt_token_ids": prompt + target} for prompt, target in zip(prompts, targets)]
        scored = []
        for output, target in zip(self.llm.generate(requests, params, use_tqdm=False), targets):
            steps = (output.prompt_logprobs[len(output.prompt_token_ids) - len(target) :] if target else []) + [
                output.outputs[0].logprobs[0]
            ]
            scored.append(self.top_k_arrays(steps))
        return scored


def check_context(args) -> None:
    """Refuse `--max_prompt_tokens` + `--max_new_tokens` beyond the LLM's positions (continuations would be cut), and
    a `--teacher_top_k` beyond its vocabulary."""
    config = AutoConfig.from_pretrained(args.llm_name_or_path, trust_remote_code=args.trust_remote_code)
    vocabulary = getattr(config.get_text_config(), "vocab_size", None)
    if vocabulary is not None and args.teacher_top_k > vocabulary:
        raise ValueError(
            f"--teacher_top_k {args.teacher_top_k} is beyond the {vocabulary}-token vocabulary of "
            f"{args.llm_name_or_path!r}: pass at most {vocabulary} (the whole distribution)."
        )
    limit = getattr(config.get_text_config(), "max_position_embeddings", None)
    if limit is not None and args.max_prompt_tokens + args.max_new_tokens > limit:
        raise ValueError(
            f"--max_prompt_tokens {args.max_prompt_tokens} + --max_new_tokens {args.max_new_tokens} is beyond the "
            f"{limit} positions of {args.llm_name_or_path!r}: lower --max_prompt_tokens to at most "
            f"{limit - args.max_new_tokens}."
        )


def build_generator(args, tokenizer, state: PartialState):
    if args.backend == "vllm":
        if state.num_processes > 1:
            raise ValueError("--backend vllm batches on its own: run it as one process, without accelerate launch.")
        return VllmGenerator(args, tokenizer, state.device)
    return TransformersGenerator(args, tokenizer, state.device)


# Step 1's part records keep the cached teacher as base64 text; the merged parquet as Arrow list columns.


def encode_array(array: np.ndarray) -> str:
    """A part record's compact copy of an array (base64 of its bytes; the dtype is the column's)."""
    return base64.b64encode(np.ascontiguousarray(array).tobytes()).decode("ascii")


def decode_array(text: str, dtype, k: int) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype=dtype).reshape(-1, k)


def add_cached_teacher(
    records: list[dict], rows: list[dict], outputs: list[list[int]], teachers: list, generator
) -> int:
    """Add each record's top-k teacher, aligned with the tokens step 2 trains on: the continuation as re-tokenized
    from its text, then EOS. Rows whose re-tokenized continuation differs from the generated tokens (a rare BPE
    round trip, or a special token decoded away) are scored again by one teacher-forced forward. Returns how many."""
    targets = generator.tokenizer([record[CONTINUATION] for record in records], add_special_tokens=False)["input_ids"]
    teachers = list(teachers)
    ends = generator.eos_ids
    generated = [tokens[:-1] if tokens and tokens[-1] in ends else tokens for tokens in outputs]
    differ = [index for index, (target, tokens) in enumerate(zip(targets, generated)) if target != tokens]
    if differ:
        scored = generator.score([rows[index]["input_ids"] for index in differ], [targets[index] for index in differ])
        for index, teacher in zip(differ, scored):
            teachers[index] = teacher
    for record, (ids, logprobs) in zip(records, teachers):
        record[TEACHER_IDS], record[TEACHER_LOGPROBS] = encode_array(ids), encode_array(logprobs)
    return len(differ)


def teacher_column(records: list[dict], key: str, dtype, k: int) -> pa.Array:
    """The rows' cached-teacher arrays as one Arrow column: a list (positions) of k-wide lists per row."""
    arrays = [decode_array(record[key], dtype, k) for record in records]
    offsets = np.cumsum([0] + [len(array) for array in arrays], dtype=np.int32)
    flat = np.concatenate(arrays).reshape(-1) if arrays else np.zeros(0, dtype)
    return pa.ListArray.from_arrays(offsets, pa.FixedSizeListArray.from_arrays(flat, k))
