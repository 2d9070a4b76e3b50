"""Speech corpora for BLSP's steps: the one format resolver (`corpus_format`), opening a split, stable row ids, the
join of step 1's rows with their source audio, and the names of the columns every step reads.

`open_corpus` gives a `datasets.Dataset` with these columns whatever the source (plus any asked to be kept):
- `row_id`: the row's position in the source split (after `max_samples`), stable from run to run;
- `audio`: `Audio(decode=False)`, i.e. `{"path", "bytes"}`; decode it lazily with `processing_blsp.load_audio`;
- `text`: the transcript, as the source holds it (check it with `rejects.text_rejection`).
"""

import json
import os
from dataclasses import dataclass, field

from datasets import (
    Audio,
    Dataset,
    DatasetDict,
    Features,
    IterableDataset,
    Value,
    concatenate_datasets,
    load_dataset,
    load_from_disk,
)
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError
from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

from .utf8 import utf8_version

ROW_ID, AUDIO, TEXT, CONTINUATION = "row_id", "audio", "text", "continuation"
CONTINUATIONS_METADATA_FILE = "blsp_continuations.json"
"""Step 1's settings and source corpus, next to its parquet shards (in the output folder and the Hub repository)."""
TEACHER_IDS, TEACHER_LOGPROBS = "teacher_top_k_ids", "teacher_top_k_logprobs"
"""Step 1's cached teacher (`--teacher_top_k`): per row, (positions, k) token ids and their log-probabilities."""
SAMPLING_RATE = 16000
METADATA_FILES = ("metadata.csv", "metadata.jsonl", "metadata.parquet")
FILE_BUILDERS = {".csv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
# Hub files read without fsspec's read-ahead (5 MB by default): a parquet column projection then fetches the byte
# ranges of its columns only (plus pyarrow's 64 KiB footer read), not the audio next to them.
NO_READ_AHEAD = {"hf": {"block_size": 1}}


@dataclass
class CorpusArguments:
    """Which speech corpus to read, and which of its rows are usable."""

    dataset_name: str = field(
        metadata={
            "help": "A Hub dataset id or a local path: an audiofolder-style directory (audio files and a "
            "metadata.csv/.jsonl/.parquet with `file_name` and the transcript), a `save_to_disk` directory, or a "
            "csv/json/jsonl/parquet file whose audio column holds paths (relative to the file)."
        }
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "The Hub dataset's configuration."})
    split: str = field(
        default="train", metadata={"aliases": ["--dataset_split"], "help": "The split to read (alias --dataset_split)."}
    )
    audio_column_name: str = field(default="audio", metadata={"help": "The column holding the audio."})
    text_column_name: str = field(default="text", metadata={"help": "The column holding the transcript."})
    dataset_revision: str | None = field(
        default=None, metadata={"help": "The Hub dataset's revision (branch, tag or commit); default: its main."}
    )
    max_samples: int | None = field(
        default=None,
        metadata={
            "aliases": ["--max_train_samples"],
            "help": "Read only the first N rows of the split (alias --max_train_samples).",
        },
    )
    min_audio_seconds: float = field(default=0.1, metadata={"help": "Reject clips shorter than this."})
    silence_threshold: float = field(
        default=1e-4, metadata={"help": "Reject clips whose peak amplitude (full scale 1.0) stays below this."}
    )


def open_corpus(args: CorpusArguments, keep_columns: tuple[str, ...] = ()) -> Dataset:
    """The corpus as `row_id`, `audio` (`Audio(decode=False)`) and `text` columns, in the source's order.

    `keep_columns` are carried over unchanged after those (e.g. step 1's `continuation`).
    """
    dataset = load_source(args)
    if args.max_samples is not None:
        dataset = dataset.select(range(min(args.max_samples, len(dataset))))
    wanted = [args.audio_column_name, args.text_column_name, *keep_columns]
    missing = [name for name in wanted if name not in dataset.column_names]
    if missing:
        raise ValueError(
            f"{args.dataset_name!r} has no column(s) {missing}; its columns are {dataset.column_names}. "
            "Set --audio_column_name and --text_column_name."
        )
    dataset = dataset.select_columns(wanted)
    dataset = dataset.rename_columns({args.audio_column_name: AUDIO, args.text_column_name: TEXT})
    dataset = dataset.add_column(ROW_ID, list(range(len(dataset))))
    dataset = dataset.select_columns([ROW_ID, AUDIO, TEXT, *keep_columns])
    if dataset.features[AUDIO] == Value("large_string"):  # Audio casts only from `string` paths
        dataset = dataset.cast_column(AUDIO, Value("string"))
    return dataset.cast_column(AUDIO, Audio(decode=False))


def join_audio(rows: Dataset, source: dict, normalize_transcripts: bool = False) -> Dataset:
    """Rows of step 1's output with each row's `audio` (`Audio(decode=False)`) from the source corpus that
    `source` (the output's recorded `source` settings) names, found by `row_id`; refused when a row's transcript is
    not the one step 1 read there (`normalize_transcripts`: step 1 normalised them), i.e. the source changed."""
    corpus = open_corpus(CorpusArguments(**source))
    row_ids = rows[ROW_ID]
    if row_ids and max(row_ids) >= len(corpus):
        raise ValueError(
            f"Row {max(row_ids)} of the continuations is not in {source['dataset_name']!r} ({len(corpus)} rows): "
            "the source corpus changed since step 1; run step 1 again or pass a dataset made with --embed_audio."
        )
    found = corpus.select(row_ids)
    normalize = transcript_normalizer(normalize_transcripts)
    changed = [
        (row_id, recorded, now)
        for row_id, recorded, now in zip(row_ids, rows[TEXT], found[TEXT])
        if recorded != (normalize(now) if isinstance(now, str) else now)
    ]
    if changed:
        raise source_changed(source["dataset_name"], changed)
    joined = rows.add_column(AUDIO, found[AUDIO]).cast_column(AUDIO, corpus.features[AUDIO])
    return joined.select_columns([ROW_ID, AUDIO, *[name for name in rows.column_names if name != ROW_ID]])


def source_changed(name: str, changed: list[tuple[int, str, str]]) -> ValueError:
    """The error for source rows `(row_id, transcript step 1 read, transcript now)` that differ."""
    row_id, recorded, now = changed[0]
    return ValueError(
        f"The source corpus {name!r} changed since step 1: {len(changed)} row(s) hold another transcript than step 1 "
        f"read there (rows {[change[0] for change in changed[:10]]}; row {row_id}: {recorded!r} then, {now!r} now). "
        "Run step 1 again, or pass a dataset made with --embed_audio."
    )


def transcript_normalizer(normalize: bool):
    """Whisper's English text normaliser (without its British-to-American spelling table), or a plain strip."""
    return EnglishTextNormalizer({}) if normalize else str.strip


def is_local(args: CorpusArguments) -> bool:
    """Whether the corpus is a local file or directory (else a Hub id)."""
    return os.path.exists(args.dataset_name)


def open_transcripts(args: CorpusArguments, streaming: bool = False) -> Dataset | IterableDataset:
    """The corpus's `row_id` and `text` columns, reading no audio: the audio column is never decoded, and for parquet
    (local files, shards or a Hub dataset) not even read. Row ids are positions in the split, as in `open_corpus`.

    A Hub dataset is always streamed (only its transcript column crosses the network); `streaming` streams local
    corpora too and returns an `IterableDataset`.
    """
    if is_local(args):
        dataset = load_local(args, columns=[args.text_column_name], streaming=streaming)
    else:
        dataset = load_split(args, columns=[args.text_column_name], streaming=True)
    if dataset.column_names is not None and args.text_column_name not in dataset.column_names:
        raise ValueError(
            f"{args.dataset_name!r} has no column {args.text_column_name!r}; its columns are {dataset.column_names}. "
            "Set --text_column_name."
        )
    dataset = dataset.select_columns([args.text_column_name])
    if args.text_column_name != TEXT:
        dataset = dataset.rename_column(args.text_column_name, TEXT)
    if args.max_samples is not None:
        dataset = dataset.take(args.max_samples)
    if streaming:
        return IterableDataset.from_generator(numbered_rows, gen_kwargs={"rows": dataset}, features=TRANSCRIPT_FEATURES)
    if isinstance(dataset, IterableDataset):  # a Hub dataset's transcripts, kept in memory
        texts = [row[TEXT] for row in dataset]
        return Dataset.from_dict({ROW_ID: list(range(len(texts))), TEXT: texts}, features=TRANSCRIPT_FEATURES)
    return dataset.add_column(ROW_ID, list(range(len(dataset)))).select_columns([ROW_ID, TEXT])


TRANSCRIPT_FEATURES = Features({ROW_ID: Value("int64"), TEXT: Value("string")})


def numbered_rows(rows):
    """Each row of a stream as `row_id` (its position) and `text` (one generator shard: every row is numbered)."""
    for row_id, row in enumerate(rows):
        yield {ROW_ID: row_id, TEXT: row[TEXT]}


def load_split(args: CorpusArguments, columns: list[str], streaming: bool) -> Dataset | IterableDataset:
    """A split of a Hub dataset or a local directory of data files, reading only `columns` when the format can
    (parquet: the other columns are neither downloaded nor read), else whole rows cut to `columns`."""
    kwargs = {"split": args.split, "revision": args.dataset_revision, "streaming": streaming}
    try:
        return load_dataset(
            args.dataset_name, args.dataset_config_name, columns=columns, storage_options=NO_READ_AHEAD, **kwargs
        )
    except (TypeError, ValueError):  # not parquet: its builder has no `columns`
        return load_dataset(args.dataset_name, args.dataset_config_name, **kwargs).select_columns(columns)


def load_local(args: CorpusArguments, columns: list[str], streaming: bool = False) -> Dataset | IterableDataset:
    """A local corpus's split, reading only `columns` of parquet files (csv/jsonl/audiofolder audio paths are read,
    never opened)."""
    storage = corpus_format(args)
    if storage in ("save_to_disk", "audiofolder"):
        dataset = load_source(args)
        return dataset.to_iterable_dataset() if streaming else dataset
    if storage in FILE_BUILDERS.values():
        projection = {"columns": columns} if storage == "parquet" else {}
        return load_data_file(storage, args.dataset_name, streaming=streaming, **projection)
    return load_split(args, columns, streaming)


def source_reference(args: CorpusArguments) -> dict:
    """What finds the corpus's clips again: the absolute local path, or the Hub id, configuration, split and the
    revision read now (so a later step reads the same rows)."""
    reference = {
        "dataset_name": os.path.abspath(args.dataset_name) if is_local(args) else args.dataset_name,
        "dataset_config_name": args.dataset_config_name,
        "split": args.split,
        "dataset_revision": args.dataset_revision,
        "audio_column_name": args.audio_column_name,
        "text_column_name": args.text_column_name,
        "max_samples": args.max_samples,
    }
    if not is_local(args) and args.dataset_revision is None:
        reference["dataset_revision"] = HfApi().dataset_info(args.dataset_name).sha
    return reference


def corpus_format(args: CorpusArguments) -> str:
    """How the corpus named by `args` is stored, the one place formats are told apart: "save_to_disk" (a
    `save_to_disk` directory), "audiofolder" (a directory with metadata files), "csv", "json" or "parquet" (one local
    file), else "load_dataset" (a Hub id, or a local directory of data files that `load_dataset` reads)."""
    path = args.dataset_name
    if os.path.isfile(os.path.join(path, "state.json")) or os.path.isfile(os.path.join(path, "dataset_dict.json")):
        return "save_to_disk"
    if os.path.isdir(path) and metadata_files(path, args.split):
        return "audiofolder"
    extension = os.path.splitext(path)[1].lower()
    if os.path.isfile(path) and extension in FILE_BUILDERS:
        return FILE_BUILDERS[extension]
    return "load_dataset"


def load_source(args: CorpusArguments) -> Dataset:
    """The split named by `args`, from a local directory or file, or else from the Hub."""
    path, storage = args.dataset_name, corpus_format(args)
    if storage == "save_to_disk":
        dataset = load_from_disk(path)
        return dataset[args.split] if isinstance(dataset, DatasetDict) else dataset
    if storage == "audiofolder":
        return load_audiofolder(path, args.split)
    if storage in FILE_BUILDERS.values():
        dataset = load_data_file(storage, path)
        return absolute_audio_paths(dataset, args.audio_column_name, os.path.dirname(os.path.abspath(path)))
    return load_dataset(path, args.dataset_config_name, split=args.split, revision=args.dataset_revision)


def continuations_metadata(dataset: Dataset | None, name_or_path: str) -> dict:
    """The settings step 1 recorded (prompt, source corpus): `CONTINUATIONS_METADATA_FILE` in the output folder or the
    Hub repository, or the description of an older `save_to_disk` output."""
    try:
        local_file = os.path.join(name_or_path, CONTINUATIONS_METADATA_FILE)
        if os.path.isfile(local_file):
            with open(local_file, encoding="utf-8") as file:
                metadata = json.load(file)
        elif os.path.exists(name_or_path):
            metadata = json.loads(dataset.info.description or "{}") if dataset is not None else {}
        else:
            with open(hf_hub_download(name_or_path, CONTINUATIONS_METADATA_FILE, repo_type="dataset")) as file:
                metadata = json.load(file)
    except (json.JSONDecodeError, EntryNotFoundError):
        return {}
    return metadata if isinstance(metadata, dict) else {}


def agreed_setting(name: str, override, metadatas: list[dict], default):
    """The command-line value, else the one value the datasets recorded, else `default`; datasets must agree."""
    if override is not None:
        return override
    recorded = {metadata[name] for metadata in metadatas if metadata.get(name) is not None}
    if len(recorded) > 1:
        raise ValueError(f"The datasets were made with different {name} values {sorted(recorded)}: give --{name}.")
    return recorded.pop() if recorded else default


def metadata_files(directory: str, split: str) -> list[str]:
    """The audiofolder metadata files under `directory/split` if that folder exists, else under `directory`."""
    if os.path.isdir(os.path.join(directory, split)):
        directory = os.path.join(directory, split)
    found = []
    for root, _, files in sorted(os.walk(directory)):
        found.extend(os.path.join(root, name) for name in sorted(files) if name in METADATA_FILES)
    return found


def load_audiofolder(directory: str, split: str) -> Dataset:
    """An audiofolder-style corpus: each metadata file's `file_name` (relative to it) becomes the `audio` column.

    Read here rather than with `load_dataset("audiofolder")`, which needs torchcodec to store audio paths.
    """
    parts = []
    for path in metadata_files(directory, split):
        builder = FILE_BUILDERS[os.path.splitext(path)[1]]
        part = load_data_file(builder, path).rename_column("file_name", AUDIO)
        parts.append(absolute_audio_paths(part, AUDIO, os.path.dirname(path)))
    return concatenate_datasets(parts)


def load_data_file(builder: str, path: str, **kwargs) -> Dataset | IterableDataset:
    """One local csv/json/parquet file as a dataset. A text file holding bytes that are not UTF-8 is read from a copy
    where they are U+FFFD, so that only its rows holding them are rejected (`text_rejection`), not the whole job."""
    if builder != "parquet":
        path = utf8_version(path)
    return load_dataset(builder, data_files=path, split="train", **kwargs)


def absolute_audio_paths(dataset: Dataset, column: str, base_directory: str) -> Dataset:
    """Resolve relative audio paths of a string column against `base_directory` (URLs and bytes are left alone)."""
    feature = dataset.features.get(column)
    if not isinstance(feature, Value) or feature.dtype not in ("string", "large_string"):
        return dataset

    def resolve(batch):
        return {
            column: [
                path if path is None or "://" in path or os.path.isabs(path) else os.path.join(base_directory, path)
                for path in batch[column]
            ]
        }

    return dataset.map(resolve, batched=True, desc="Resolving audio paths")
