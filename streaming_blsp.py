"""Step 2's streamed training rows: continuation datasets read as `datasets.IterableDataset`s, joined with their audio
by row id, interleaved by weight, shuffled in a buffer, cut to a maximum duration and grouped by duration within it.

Rows carry `corpus` (the dataset's index in `--dataset_name`) and `row_id`, so a run can log what it trained on.
"""

import io
import random
from functools import partial

import soundfile
from datasets import Features, IterableDataset, Value, interleave_datasets, load_dataset

from data_blsp import AUDIO, ROW_ID, TEXT, CorpusArguments, is_local, load_local, load_split

CONTINUATION, INSTRUCTION, CORPUS = "continuation", "instruction", "corpus"
# Audio as its `{"bytes", "path"}` storage: `datasets.Audio` would need torchcodec to encode rows of a generator.
AUDIO_STORAGE = {"bytes": Value("binary"), "path": Value("string")}
STREAM_FEATURES = Features(
    {
        CORPUS: Value("int64"),
        ROW_ID: Value("int64"),
        AUDIO: AUDIO_STORAGE,
        TEXT: Value("string"),
        CONTINUATION: Value("string"),
        INSTRUCTION: Value("string"),
    }
)


def stream_continuations(name: str, split: str, corpus: int, instruction: str, metadata: dict) -> IterableDataset:
    """One continuation dataset as a stream of `STREAM_FEATURES` rows.

    A dataset made with `--embed_audio` streams its own shards. Otherwise its (text-only) rows are read into memory
    and the source corpus named in `metadata["source"]` is streamed, keeping the rows that have a continuation.
    """
    rows = load_dataset(name, split=split, streaming=True)
    if AUDIO in (rows.column_names or []):
        stream = rows.select_columns([ROW_ID, AUDIO, TEXT, CONTINUATION])
    else:
        continuations = {row[ROW_ID]: row for row in load_dataset(name, split=split, streaming=True)}
        source = CorpusArguments(**metadata["source"])
        audio = open_audio_stream(source)
        features = Features({name: STREAM_FEATURES[name] for name in (ROW_ID, AUDIO, TEXT, CONTINUATION)})
        stream = IterableDataset.from_generator(
            joined_rows, gen_kwargs={"audio": audio, "continuations": continuations}, features=features
        )
    stream = stream.cast_column(AUDIO, AUDIO_STORAGE)
    labels = partial(label_rows, corpus=corpus, instruction=instruction)
    return stream.map(labels, batched=True, features=STREAM_FEATURES)


def label_rows(rows: dict, corpus: int, instruction: str) -> dict:
    """A batched map adding each row's corpus index and prompt instruction."""
    return {CORPUS: [corpus] * len(rows[ROW_ID]), INSTRUCTION: [instruction] * len(rows[ROW_ID])}


def open_audio_stream(source: CorpusArguments) -> IterableDataset:
    """The source corpus's audio column, streamed in row order (rows numbered by position, as step 1 did)."""
    columns = [source.audio_column_name]
    if is_local(source):
        stream = load_local(source, columns=columns, streaming=True)
    else:
        stream = load_split(source, columns=columns, streaming=True)
    stream = stream.select_columns(columns)
    if source.audio_column_name != AUDIO:
        stream = stream.rename_column(source.audio_column_name, AUDIO)
    stream = stream.cast_column(AUDIO, AUDIO_STORAGE)
    return stream.take(source.max_samples) if source.max_samples is not None else stream


def joined_rows(audio: IterableDataset, continuations: dict):
    """Rows of the source stream that have a continuation, with its row id, transcript and continuation."""
    for row_id, row in enumerate(audio):
        if row_id in continuations:
            record = continuations[row_id]
            yield {ROW_ID: row_id, AUDIO: row[AUDIO], TEXT: record[TEXT], CONTINUATION: record[CONTINUATION]}


def clip_seconds(audio: dict) -> float:
    """A clip's duration from its header (nothing decoded); 0 when unreadable (the collator skips and counts it)."""
    source = io.BytesIO(audio["bytes"]) if audio.get("bytes") else audio.get("path")
    try:
        info = soundfile.info(source)
    except Exception:
        return 0.0
    return info.frames / info.samplerate


def shuffle_and_group(rows: dict, indices: list[int], seed: int, group_rows: int, max_seconds: float | None) -> dict:
    """A batched map over a buffer of rows: those over `max_seconds` dropped, the rest shuffled, cut into groups of
    `group_rows` sorted by duration (so consecutive rows, hence batches, have similar durations), the groups in a
    random order. The randomness is drawn from `seed` and the buffer's position: a replayed stream repeats it.

    (A buffer in a batched map rather than `IterableDataset.shuffle`, which splits parquet files into row-group
    shards and reopens a file for each: several times slower, and its memory grows with the number of files.)
    """
    seconds = [clip_seconds(audio) for audio in rows[AUDIO]]
    kept = [index for index, length in enumerate(seconds) if max_seconds is None or length <= max_seconds]
    generator = random.Random(seed * 1_000_003 + indices[0])
    generator.shuffle(kept)
    groups = [
        sorted(kept[start : start + group_rows], key=lambda index: -seconds[index])
        for start in range(0, len(kept), group_rows)
    ]
    generator.shuffle(groups)
    order = [index for group in groups for index in group]
    return {column: [values[index] for index in order] for column, values in rows.items()}


def training_stream(
    streams: list[IterableDataset],
    weights: list[float] | None,
    seed: int,
    shuffle_buffer_size: int,
    group_rows: int,
    max_audio_seconds: float | None,
) -> IterableDataset:
    """Streams interleaved by `weights` (each row drawn from a corpus with that probability), then shuffled and
    grouped by duration a buffer of `shuffle_buffer_size` rows at a time (clips over `max_audio_seconds` dropped)."""
    if len(streams) == 1:
        stream = streams[0]
    else:
        probabilities = [weight / sum(weights) for weight in weights] if weights else None
        stream = interleave_datasets(streams, probabilities=probabilities, seed=seed)
    return stream.map(
        shuffle_and_group,
        batched=True,
        batch_size=max(shuffle_buffer_size, group_rows),
        with_indices=True,
        fn_kwargs={"seed": seed, "group_rows": group_rows, "max_seconds": max_audio_seconds},
        features=STREAM_FEATURES,
    )
