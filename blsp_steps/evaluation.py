"""Zero-shot evaluation: a BLSP checkpoint hearing the speech, the text-input upper bound or an ASR cascade on a
dataset with an instruction, scored by WER, BLEU and exact match. `evaluate_blsp.py` is its command line; the
recipes (`world.run`, `english.score`) call `evaluate` directly."""

import json
import os
import string
from dataclasses import asdict, dataclass, field

import jiwer
import sacrebleu
import torch
from datasets import Audio
from tqdm.auto import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
    PreTrainedConfig,
    pipeline,
)
from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

from configuration_blsp import check_ctc_decoding
from modeling_blsp import BlspForConditionalGeneration
from processing_blsp import TASK_INSTRUCTIONS, AudioInputError, BlspProcessor, load_audio, render_prompt

from .arguments import dtype_field, parse_config_overrides
from .corpora import ROW_ID, SAMPLING_RATE, CorpusArguments, load_source
from .rejects import audio_source

INPUT_KINDS = ("speech", "text", "cascade")
BUDGET_TOKENS = 8
"""A row's token budget with --max_new_tokens_per_second starts here (room for punctuation and a short reply)."""


@dataclass
class EvaluationArguments:
    model_name_or_path: str = field(
        metadata={"help": "A BLSP checkpoint; with --input text or cascade, a BLSP checkpoint or any causal LLM."}
    )
    output_dir: str = field(metadata={"help": "Where predictions.jsonl and metrics.json are written."})
    input: str = field(
        default="speech",
        metadata={
            "help": "speech: the BLSP model hears the audio; text: the LLM reads the reference transcript (upper "
            "bound); cascade: the LLM reads an ASR transcript."
        },
    )
    task: str = field(default="transcribe", metadata={"help": "transcribe, translate, answer or continue."})
    instruction: str | None = field(default=None, metadata={"help": "The instruction; a default per task."})
    instruction_column_name: str | None = field(default=None, metadata={"help": "A column of per-row instructions."})
    reference_column_name: str | None = field(
        default=None, metadata={"help": "The column of references (default: the transcript column)."}
    )
    asr_model_name_or_path: str | None = field(
        default=None, metadata={"help": "--input cascade: a transformers automatic-speech-recognition model."}
    )
    asr_transcript_column_name: str | None = field(
        default=None, metadata={"help": "--input cascade: a column of ASR transcripts computed beforehand."}
    )
    prompt_layout: str | None = field(
        default=None, metadata={"help": "instruction_first or speech_first (default: the checkpoint's processor)."}
    )
    system_prompt: str | None = field(default=None, metadata={"help": "System message for chat LLMs."})
    history_file: str | None = field(
        default=None,
        metadata={
            "help": "A JSON file of chat turns put before each row's turn, the same for every row and system: "
            'few-shot examples, e.g. [{"role": "user", "content": "Which colour is mentioned? the red door"}, '
            '{"role": "assistant", "content": "red"}]. Text only.'
        },
    )
    speech_model_name_or_path: str | None = field(
        default=None, metadata={"help": "An adapter-only checkpoint's Whisper base, when not the one it names."}
    )
    text_model_name_or_path: str | None = field(
        default=None, metadata={"help": "An adapter-only checkpoint's LLM base, when not the one it names."}
    )
    ctc_temperature: float | None = field(
        default=None,
        metadata={
            "help": "A BLSP checkpoint's ctc_temperature for this run (speech_compression='ctc'; 0: each kept frame "
            "enters as its best token's embedding); the checkpoint's own when not set."
        },
    )
    config_overrides: str | None = field(
        default=None,
        metadata={
            "help": "Override a BLSP checkpoint's decode-time config settings for this run, as examples/pytorch does: "
            "e.g. 'ctc_beam_size=16,ctc_lm_weight=0.3,ctc_length_bonus=2'."
        },
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={
            "help": "Run code the checkpoint ships (its own model or tokenizer class files). Off by default: "
            "BLSP checkpoints load without it."
        },
    )
    batch_size: int = field(default=8)
    max_new_tokens: int = field(default=128)
    max_new_tokens_per_second: float | None = field(
        default=None,
        metadata={
            "help": f"Give each row a budget of its own: {BUDGET_TOKENS} tokens plus this many per second of its audio "
            "(--duration_column_name), at most --max_new_tokens. With greedy decoding this is the row's own "
            "max_new_tokens: a one-word clip is not given the room of the longest one."
        },
    )
    duration_column_name: str = field(
        default="duration", metadata={"help": "The column of clip durations in seconds (--max_new_tokens_per_second)."}
    )
    first_line: bool = field(
        default=False,
        metadata={
            "help": "Score the reply's first non-empty line only (for instructions that say to write nothing else); "
            "predictions.jsonl keeps the whole reply beside it."
        },
    )
    no_repeat_reply_ngram_size: int | None = field(
        default=None,
        metadata={
            "help": "Forbid a reply to repeat any of its own n-grams of this many tokens (the prompt is not counted, "
            "so text can still be copied from it): greedy decoding cannot loop on a phrase."
        },
    )
    dtype: str = dtype_field()

    def __post_init__(self):
        if self.no_repeat_reply_ngram_size is not None and self.no_repeat_reply_ngram_size < 1:
            raise ValueError(f"--no_repeat_reply_ngram_size must be at least 1, got {self.no_repeat_reply_ngram_size}.")
        if self.input not in INPUT_KINDS:
            raise ValueError(f"--input must be one of {INPUT_KINDS}, got {self.input!r}")
        if self.task not in TASK_INSTRUCTIONS:
            raise ValueError(f"--task must be one of {sorted(TASK_INSTRUCTIONS)}, got {self.task!r}")
        if self.input == "cascade" and not (self.asr_model_name_or_path or self.asr_transcript_column_name):
            raise ValueError("--input cascade needs --asr_model_name_or_path or --asr_transcript_column_name.")


def read_history(path: str) -> list[dict]:
    """Chat turns from a JSON file: a list of {"role": "user" | "assistant", "content": text}, checked."""
    with open(path, encoding="utf-8") as file:
        turns = json.load(file)
    for index, turn in enumerate(turns if isinstance(turns, list) else [turns]):
        if (
            not isinstance(turns, list)
            or not isinstance(turn, dict)
            or turn.get("role") not in ("user", "assistant")
            or not isinstance(turn.get("content"), str)
        ):
            raise ValueError(
                f"{path}: turn {index} is {turn!r}; a history file is a JSON list of "
                '{"role": "user" or "assistant", "content": "text"} turns.'
            )
    return turns


def row_budget(duration: float, args: EvaluationArguments) -> int:
    """The row's max_new_tokens: `BUDGET_TOKENS` plus `max_new_tokens_per_second` per second, at most max_new_tokens."""
    return min(args.max_new_tokens, int(BUDGET_TOKENS + args.max_new_tokens_per_second * duration))


def first_line(reply: str) -> str:
    """The reply's first non-empty line."""
    return next((line.strip() for line in reply.splitlines() if line.strip()), "")


def normalize_words(text: str) -> str:
    """Lower case, no punctuation, single spaces (for exact match and BLEU); WER also uses Whisper's normaliser."""
    return " ".join(text.lower().translate(str.maketrans("", "", string.punctuation)).split())


def wer_words(text: str, normalizer: EnglishTextNormalizer) -> str:
    """Whisper's English normaliser, without the lone "." it leaves where a text trails off ("To exit the menu...")."""
    return " ".join(word for word in normalizer(text).split() if any(c.isalnum() for c in word))


def score(predictions: list[str], references: list[str]) -> dict[str, float]:
    """WER (Whisper English normaliser), BLEU (sacrebleu, normalised words) and exact-match accuracy."""
    normalizer = EnglishTextNormalizer({})
    wer_references = [wer_words(reference, normalizer) or "<empty>" for reference in references]
    wer_predictions = [wer_words(prediction, normalizer) for prediction in predictions]
    words_predictions = [normalize_words(prediction) for prediction in predictions]
    words_references = [normalize_words(reference) for reference in references]
    exact = sum(p == r for p, r in zip(words_predictions, words_references))
    return {
        "wer": 100 * jiwer.wer(wer_references, wer_predictions),
        "bleu": sacrebleu.corpus_bleu(words_predictions, [words_references]).score,
        "exact_match": 100 * exact / len(references),
    }


class NoRepeatReplyNGram(NoRepeatNGramLogitsProcessor):
    """transformers' n-gram block over the reply only: its own `no_repeat_ngram_size` counts the prompt too, which
    forbids copying the text a transcription prompt holds."""

    def __init__(self, ngram_size: int, prompt_length: int):
        super().__init__(ngram_size)
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return super().__call__(input_ids[:, self.prompt_length :], scores)


class Generator:
    """Batched greedy generation from speech (a BLSP model) or from text (its LLM, or any causal LLM)."""

    def __init__(self, args: EvaluationArguments):
        self.args = args
        dtype = args.dtype
        device = "cuda" if torch.cuda.is_available() else "cpu"
        trust = args.trust_remote_code
        is_blsp = PreTrainedConfig.get_config_dict(args.model_name_or_path)[0].get("model_type") == "blsp"
        if is_blsp:
            bases = {"speech_model_name_or_path": args.speech_model_name_or_path}
            bases["text_model_name_or_path"] = args.text_model_name_or_path
            bases = {key: value for key, value in bases.items() if value}
            if args.ctc_temperature is not None:
                bases["ctc_temperature"] = args.ctc_temperature
            bases.update(parse_config_overrides(args.config_overrides))
            model = BlspForConditionalGeneration.from_pretrained(args.model_name_or_path, dtype=dtype, **bases)
            check_ctc_decoding(model.config)  # from_pretrained sets its keyword arguments after the config's checks
            self.processor = BlspProcessor.from_pretrained(args.model_name_or_path, trust_remote_code=trust)
            self.tokenizer = self.processor.tokenizer
            self.model = (model if args.input == "speech" else model.language_model).to(device).eval()
        elif args.input == "speech":
            raise ValueError(f"{args.model_name_or_path!r} is not a BLSP checkpoint: --input speech needs one.")
        else:
            llm = AutoModelForCausalLM.from_pretrained(args.model_name_or_path, dtype=dtype, trust_remote_code=trust)
            self.model = llm.to(device).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path, trust_remote_code=trust)
        self.layout = args.prompt_layout or getattr(getattr(self, "processor", None), "prompt_layout", None)
        self.layout = self.layout or "instruction_first"
        self.system_prompt = args.system_prompt or getattr(getattr(self, "processor", None), "system_prompt", None)
        self.history = read_history(args.history_file) if args.history_file else None
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        text_config = getattr(self.model.config, "text_config", self.model.config)
        self.limit = getattr(text_config, "max_position_embeddings", None)

    def context_error(self, instruction: str, content) -> str | None:
        """Why a row's prompt (speech tokens included) and `max_new_tokens` exceed the LLM's positions, or None."""
        if self.args.input == "speech":
            ids = self.processor.prompt_ids(self.prompt(instruction, self.processor.speech_token))
            speech_tokens = self.processor.num_speech_tokens(len(content))
            prompt_tokens = len(ids) - ids.count(self.processor.speech_token_id)
        else:
            speech_tokens = 0
            prompt_tokens = len(self.tokenizer(self.prompt(instruction, content), add_special_tokens=False).input_ids)
        return BlspProcessor.context_error(speech_tokens, prompt_tokens, self.args.max_new_tokens, self.limit)

    def prompt(self, instruction: str, content: str) -> str:
        return render_prompt(
            self.tokenizer, instruction, content, self.layout, self.system_prompt, history=self.history
        )

    @torch.inference_mode()
    def generate(self, instructions: list[str], contents: list, budgets: list[int] | None = None) -> list[str]:
        """Greedy continuations of the prompts; `contents` are clips (speech input) or texts. `budgets`: each row's
        max_new_tokens (the batch generates to the largest and each row is cut to its own, which greedy decoding
        makes the same as generating it alone with its budget)."""
        if self.args.input == "speech":
            prompts = [self.prompt(instruction, self.processor.speech_token) for instruction in instructions]
            inputs = self.processor(text=prompts, audio=contents)
        else:
            prompts = [self.prompt(instruction, text) for instruction, text in zip(instructions, contents)]
            inputs = self.tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
        inputs = inputs.to(self.model.device)
        if "input_features" in inputs:
            inputs["input_features"] = inputs["input_features"].to(self.model.dtype)
        budgets = budgets or [self.args.max_new_tokens] * len(contents)
        prompt_length = inputs["input_ids"].shape[1]
        processors = LogitsProcessorList()
        if self.args.no_repeat_reply_ngram_size:
            processors.append(NoRepeatReplyNGram(self.args.no_repeat_reply_ngram_size, prompt_length))
        output = self.model.generate(
            **inputs, do_sample=False, max_new_tokens=max(budgets), logits_processor=processors
        )
        replies = output[:, prompt_length:]
        return [
            self.tokenizer.decode(reply[:budget], skip_special_tokens=True).strip()
            for reply, budget in zip(replies, budgets)
        ]


def read_rows(corpus: CorpusArguments, args: EvaluationArguments) -> list[dict]:
    """Rows as dicts of row, audio, transcript, reference, instruction (and ASR transcript when given)."""
    dataset = load_source(corpus)
    if corpus.max_samples is not None:
        dataset = dataset.select(range(min(corpus.max_samples, len(dataset))))
    columns = {
        "audio": None if args.input == "text" else corpus.audio_column_name,
        "transcript": corpus.text_column_name,
        "reference": args.reference_column_name or corpus.text_column_name,
        "instruction": args.instruction_column_name,
        "asr_transcript": args.asr_transcript_column_name,
        "duration": args.duration_column_name if args.max_new_tokens_per_second is not None else None,
    }
    missing = [name for name in columns.values() if name and name not in dataset.column_names]
    if missing:
        raise ValueError(f"{corpus.dataset_name!r} has no column(s) {missing}; its columns: {dataset.column_names}.")
    if columns["audio"] and isinstance(dataset.features[columns["audio"]], Audio):
        dataset = dataset.cast_column(columns["audio"], Audio(decode=False))
    instruction = args.instruction or TASK_INSTRUCTIONS[args.task]
    return [
        {
            ROW_ID: index,
            **{key: record[column] for key, column in columns.items() if column},
            "instruction": record[columns["instruction"]] if columns["instruction"] else instruction,
        }
        for index, record in enumerate(dataset)
    ]


def model_contents(rows: list[dict], args: EvaluationArguments, asr=None) -> tuple[list, list[dict]]:
    """What the model reads for each row (a clip or a text), and the rows whose audio cannot be used."""
    contents, rejects = [], []
    for row in rows:
        try:
            if args.input == "text":
                contents.append(row["transcript"])
            elif args.input == "cascade" and "asr_transcript" in row:
                contents.append(row["asr_transcript"])
            else:
                clip = load_audio(row["audio"], SAMPLING_RATE)
                contents.append(clip if args.input == "speech" else asr(clip)["text"].strip())
        except AudioInputError as error:
            rejects.append({ROW_ID: row[ROW_ID], "source": audio_source(row.get("audio")), "reason": str(error)})
            contents.append(None)
    return contents, rejects


def too_long(rows: list[dict], contents: list, generator: Generator) -> list[dict]:
    """Rejects for the rows that do not fit the LLM's context; their contents become None."""
    rejects = []
    for index, (row, content) in enumerate(zip(rows, contents)):
        error = None if content is None else generator.context_error(row["instruction"], content)
        if error:
            source = audio_source(row.get("audio"))
            rejects.append(
                {ROW_ID: row[ROW_ID], "source": source, "reason": f"row {row[ROW_ID]} ({source}) is {error}"}
            )
            contents[index] = None
    return rejects


def evaluate(corpus: CorpusArguments, args: EvaluationArguments) -> dict:
    """Generate for every usable row, write predictions.jsonl and metrics.json, and return the metrics."""
    rows = read_rows(corpus, args)
    generator = Generator(args)
    asr = None
    if args.input == "cascade" and args.asr_model_name_or_path:
        asr = pipeline("automatic-speech-recognition", model=args.asr_model_name_or_path)
    os.makedirs(args.output_dir, exist_ok=True)
    predictions, references = [], []
    rejects = []
    with open(os.path.join(args.output_dir, "predictions.jsonl"), "w", encoding="utf-8") as file:
        for start in tqdm(range(0, len(rows), args.batch_size), desc="evaluate", unit="batch"):
            batch = rows[start : start + args.batch_size]
            contents, batch_rejects = model_contents(batch, args, asr)
            rejects.extend(batch_rejects + too_long(batch, contents, generator))
            usable = [(row, content) for row, content in zip(batch, contents) if content is not None]
            if not usable:
                continue
            budgets = None
            if args.max_new_tokens_per_second is not None:
                budgets = [row_budget(row["duration"], args) for row, _ in usable]
            instructions, texts = [row["instruction"] for row, _ in usable], [content for _, content in usable]
            outputs = generator.generate(instructions, texts, budgets)
            for index, ((row, content), reply) in enumerate(zip(usable, outputs)):
                record = {ROW_ID: row[ROW_ID], "instruction": row["instruction"], "reference": row["reference"]}
                prediction = first_line(reply) if args.first_line else reply
                record["prediction"] = prediction
                if prediction != reply:
                    record["reply"] = reply
                if budgets:
                    record["max_new_tokens"] = budgets[index]
                if args.input != "speech":
                    record["input_text"] = content
                file.write(json.dumps(record, ensure_ascii=False) + "\n")
                predictions.append(prediction)
                references.append(row["reference"])
    metrics = {
        "task": args.task,
        "input": args.input,
        "rows": len(rows),
        "scored": len(predictions),
        "rejected": len(rejects),
        **(score(predictions, references) if predictions else {}),
        "rejects": rejects,
        "settings": {**asdict(args), "dataset_name": corpus.dataset_name, "split": corpus.split},
    }
    with open(os.path.join(args.output_dir, "metrics.json"), "w", encoding="utf-8") as file:
        json.dump(metrics, file, indent=2, ensure_ascii=False)
    return metrics
