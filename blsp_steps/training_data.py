"""Step 2's training and evaluation sets: step 1's continuations (map-style or streamed) with their audio.

Each source's prompt instruction is the command line's, else the one step 1 recorded; rows carry their duration (for
length grouping) read from a duration column or the audio headers, never by decoding. `data_args` and
`training_args` are `train_adapter.py`'s `DataArguments` and `BlspTrainingArguments`.
"""

import logging
from functools import partial

import datasets
from datasets import Audio, concatenate_datasets, load_dataset

from processing_blsp import CONTINUATION_INSTRUCTION

from .corpora import (
    AUDIO,
    CONTINUATION,
    ROW_ID,
    TEACHER_IDS,
    TEACHER_LOGPROBS,
    TEXT,
    CorpusArguments,
    continuations_metadata,
    join_audio,
    load_source,
)
from .objectives import check_columns
from .streaming import TEACHER_COLUMNS, clip_seconds, stream_continuations, training_stream

logger = logging.getLogger(__name__)


def dataset_instruction(data_args, metadata: dict) -> str:
    """The command-line instruction, else the dataset's recorded one, else BLSP's continuation instruction."""
    return data_args.instruction or metadata.get("instruction") or CONTINUATION_INSTRUCTION


def shared_teacher_k(features: list) -> int | None:
    """k when every dataset (by its `features`) holds a cached teacher of k tokens per position, else None: the
    teacher's columns are then left out of every dataset (and the KL objective runs the live teacher)."""
    widths = set()
    for dataset_features in features:
        ids = (dataset_features or {}).get(TEACHER_IDS)  # List(List(Value("int32"), length=k)), as step 1 writes it
        widths.add(ids.feature.length if ids is not None else None)
    return widths.pop() if len(widths) == 1 and None not in widths else None


def check_recorded_teacher_k(name: str, metadata: dict, features) -> None:
    """Refuse a dataset whose cached teacher holds another k per position than step 1 recorded (the data was
    edited or mixed: the KL bound and the model card would be wrong)."""
    ids = (features or {}).get(TEACHER_IDS)
    recorded = metadata.get("teacher_top_k")
    if ids is not None and recorded and ids.feature.length != recorded:
        raise ValueError(
            f"Dataset {name!r} records a cached teacher of top-{recorded} but its {TEACHER_IDS!r} column holds "
            f"{ids.feature.length} tokens per position: make the continuations again with generate_continuations.py "
            "(--teacher_top_k), or remove the teacher columns and train with --teacher live."
        )


def audio_duration_ms(audio: dict) -> dict:
    """Duration of a `{"path", "bytes"}` audio cell from its header (no decoding); 0 when unreadable (the collator
    skips and counts the row)."""
    return {"length": int(1000 * clip_seconds(audio))}


def prepare_dataset(
    names: list[str], split: str, data_args, loss_terms: set[str], length_column: str
) -> tuple[datasets.Dataset, list[dict]]:
    """Open, check and concatenate datasets; add an `instruction` column and audio durations for length grouping.

    Returns the dataset and each source's prompt metadata.
    """
    parts, metadatas = [], []
    for name in names:
        dataset = load_source(CorpusArguments(dataset_name=name, split=split))
        metadata = continuations_metadata(dataset, name)
        check_recorded_teacher_k(name, metadata, dataset.features)
        if "audio" not in dataset.column_names and "source" in metadata:  # step 1 kept no copy of the audio
            dataset = join_audio(dataset, metadata["source"], metadata.get("normalize_transcripts", False))
        check_columns(dataset.column_names, name, loss_terms)
        instruction = dataset_instruction(data_args, metadata)
        if ROW_ID not in dataset.column_names:  # rejects and logs name rows by their position then
            dataset = dataset.add_column(ROW_ID, list(range(len(dataset))))
        wanted = (ROW_ID, AUDIO, TEXT, CONTINUATION, data_args.duration_column_name, TEACHER_IDS, TEACHER_LOGPROBS)
        keep = [column for column in wanted if column in dataset.column_names]
        dataset = dataset.select_columns(keep).cast_column("audio", Audio(decode=False))
        parts.append(dataset.add_column("instruction", [instruction] * len(dataset)))
        metadatas.append(metadata)
    duration = data_args.duration_column_name
    if not all(duration in part.column_names for part in parts):  # kept only when every dataset has it
        parts = [part.remove_columns([duration]) if duration in part.column_names else part for part in parts]
    if shared_teacher_k([part.features for part in parts]) is None:
        parts = [part.remove_columns([name for name in TEACHER_COLUMNS if name in part.column_names]) for part in parts]
    dataset = concatenate_datasets(parts)
    if "continuation" in dataset.column_names:
        before = len(dataset)
        dataset = dataset.filter(bool, input_columns=["continuation"])
        if len(dataset) < before:
            logger.warning("Dropped %d rows without a continuation.", before - len(dataset))
    if duration in dataset.column_names:
        dataset = dataset.map(
            lambda seconds: {"length": [int(1000 * value) for value in seconds]},
            input_columns=[duration],
            batched=True,
            desc="Durations from the duration column",
        )
    else:
        dataset = dataset.map(
            audio_duration_ms,
            input_columns=["audio"],
            num_proc=data_args.preprocessing_num_workers,
            desc="Reading audio durations",
        )
    if length_column != "length":
        dataset = dataset.rename_column("length", length_column)
    return dataset, metadatas


def truncate(dataset: datasets.Dataset | None, max_samples: int | None) -> datasets.Dataset | None:
    if dataset is None or max_samples is None:
        return dataset
    return dataset.select(range(min(max_samples, len(dataset))))


def stream_datasets(data_args, training_args):
    """The training rows as one stream (see `streaming`) and the datasets' prompt metadata. The rows carry the
    cached teacher when every dataset holds one of the same k (as `prepare_dataset`'s do)."""
    names = data_args.dataset_name
    opened = [load_dataset(name, split=data_args.split, streaming=True) for name in names]
    teacher_k = shared_teacher_k([rows.features for rows in opened])
    streams, metadatas = [], []
    for index, (name, rows) in enumerate(zip(names, opened)):
        metadata = continuations_metadata(None, name)
        check_recorded_teacher_k(name, metadata, rows.features)
        instruction = dataset_instruction(data_args, metadata)
        duration = data_args.duration_column_name
        streams.append(stream_continuations(rows, index, instruction, metadata, duration, teacher_k))
        metadatas.append(metadata)
    stream = training_stream(
        streams,
        data_args.dataset_weights,
        training_args.data_seed if training_args.data_seed is not None else training_args.seed,
        data_args.shuffle_buffer_size,
        data_args.length_grouping_rows,
        data_args.max_audio_seconds,
    )
    return stream, metadatas


def load_datasets(data_args, training_args):
    """Training and evaluation sets (the latter may be None) and the training sets' prompt metadata."""
    if data_args.streaming:
        train_dataset, metadatas = stream_datasets(data_args, training_args)
        eval_dataset = None
        if data_args.eval_dataset_name:
            eval_dataset, _ = prepare_dataset(
                data_args.eval_dataset_name,
                data_args.eval_dataset_split,
                data_args,
                training_args.loss_terms,
                training_args.length_column_name,
            )
        return train_dataset, truncate(eval_dataset, data_args.max_eval_samples), metadatas
    prepare = partial(
        prepare_dataset,
        data_args=data_args,
        loss_terms=training_args.loss_terms,
        length_column=training_args.length_column_name,
    )
    train_dataset, metadatas = prepare(data_args.dataset_name, data_args.split)
    eval_dataset = None
    if data_args.eval_dataset_name:
        eval_dataset, _ = prepare(data_args.eval_dataset_name, data_args.eval_dataset_split)
    elif data_args.eval_split_ratio:
        split = train_dataset.train_test_split(test_size=data_args.eval_split_ratio, seed=training_args.seed)
        train_dataset, eval_dataset = split["train"], split["test"]
    train_dataset = truncate(train_dataset, data_args.max_samples)
    return train_dataset, truncate(eval_dataset, data_args.max_eval_samples), metadatas
