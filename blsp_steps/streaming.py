"""Step 2's streamed training rows: continuation datasets read as `datasets.IterableDataset`s, joined with their audio
by row id, interleaved by weight, shuffled in a buffer, cut to a maximum duration and grouped by duration within it.

Rows carry `corpus` (the dataset's index in `--dataset_name`) and `row_id`, so a run can log what it trained on, and
`seconds`: the clip's duration from the corpus's duration column when it has one, else None (read from the clip's
header when the buffer is grouped). With `teacher_k`, they also carry step 1's cached teacher (`TEACHER_IDS`,
`TEACHER_LOGPROBS`: the top-k ids and log-probs at each position, as map-style rows do).

A source corpus in parquet files is streamed one file per shard, each numbered from its first row's position in the
split (from the files' footers): `accelerate` gives each process its own shards, and row ids stay those of step 1.
"""

import io
import os
import random
from functools import partial

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile
from datasets import (
    Audio,
    Features,
    IterableDataset,
    List,
    Value,
    interleave_datasets,
    load_dataset,
    load_dataset_builder,
)

from .corpora import (
    AUDIO,
    CONTINUATION,
    ROW_ID,
    TEACHER_IDS,
    TEACHER_LOGPROBS,
    TEXT,
    CorpusArguments,
    corpus_format,
    is_local,
    load_local,
    load_split,
    source_changed,
    transcript_normalizer,
)

INSTRUCTION, CORPUS, SECONDS = "instruction", "corpus", "seconds"
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
        SECONDS: Value("float64"),
    }
)
JOINED_FEATURES = Features({name: STREAM_FEATURES[name] for name in (ROW_ID, AUDIO, TEXT, CONTINUATION, SECONDS)})
TEACHER_COLUMNS = (TEACHER_IDS, TEACHER_LOGPROBS)


def with_teacher(features: Features, teacher_k: int | None) -> Features:
    """`features` plus the cached teacher's columns of `teacher_k` tokens per position (none when None), typed as
    step 1 writes them."""
    if teacher_k is None:
        return features
    types = {TEACHER_IDS: "int32", TEACHER_LOGPROBS: "float16"}
    return Features({**features, **{name: List(List(Value(types[name]), length=teacher_k)) for name in types}})


def stream_continuations(
    rows: IterableDataset,
    corpus: int,
    instruction: str,
    metadata: dict,
    duration_column: str = "duration",
    teacher_k: int | None = None,
) -> IterableDataset:
    """One continuation dataset (`rows`: step 1's output, streamed) as a stream of `STREAM_FEATURES` rows, with its
    cached teacher of `teacher_k` tokens when given (`with_teacher`).

    A dataset made with `--embed_audio` streams its own shards. Otherwise its (text-only) rows are read into memory
    and the source corpus named in `metadata["source"]` is streamed, keeping the rows that have a continuation.
    `duration_column` (seconds) is read when the dataset, or its source corpus, has it.
    """
    labels = {CORPUS: corpus, INSTRUCTION: instruction}
    teacher_columns = list(TEACHER_COLUMNS) if teacher_k is not None else []
    if AUDIO in (rows.column_names or []):
        columns = [ROW_ID, AUDIO, TEXT, CONTINUATION, *optional(duration_column, rows.column_names), *teacher_columns]
        stream = rows.select_columns(columns).cast_column(AUDIO, AUDIO_STORAGE)
        if duration_column in stream.column_names:
            stream = stream.rename_column(duration_column, SECONDS).cast_column(SECONDS, Value("float64"))
        else:
            labels[SECONDS] = None
    else:
        continuations, teacher = read_continuations(rows, teacher_columns)
        source = CorpusArguments(**metadata["source"])
        shards = parquet_shards(source)
        generator, gen_kwargs = joined_shard_rows, {"shards": shards}
        if shards is None:  # not parquet: one shard, numbered as it streams
            generator, gen_kwargs = joined_rows, {"audio": open_audio_stream(source, duration_column)}
        gen_kwargs.update(continuations=continuations, duration_column=duration_column, teacher=teacher)
        gen_kwargs["normalize_transcripts"] = metadata.get("normalize_transcripts", False)
        features = with_teacher(JOINED_FEATURES, teacher_k)
        stream = IterableDataset.from_generator(generator, gen_kwargs=gen_kwargs, features=features)
    # Row by row: a batched map would make each row's key its whole batch's keys, which the buffer's map joins again.
    return stream.map(partial(label_row, labels=labels), features=with_teacher(STREAM_FEATURES, teacher_k))


def read_continuations(rows: IterableDataset, teacher_columns: list[str]) -> tuple[dict, pa.Table | None]:
    """Step 1's text-only rows in memory: row id -> (transcript, continuation, position), and the `teacher_columns`
    (the cached teacher's, or none: None) as one Arrow table, as compact as stored, whose row `position` is that
    row's."""
    continuations, tables, position = {}, [], 0
    for table in rows.select_columns([ROW_ID, TEXT, CONTINUATION, *teacher_columns]).with_format("arrow").iter(10_000):
        for row_id, text, continuation in zip(
            *(table.column(name).to_pylist() for name in (ROW_ID, TEXT, CONTINUATION))
        ):
            continuations[row_id] = (text, continuation, position)
            position += 1
        tables.append(table.select(teacher_columns))
    teacher = pa.concat_tables(tables).combine_chunks() if teacher_columns and tables else None
    return continuations, teacher


def optional(column: str, columns: list[str] | None) -> list[str]:
    """`[column]` when the dataset has it, else `[]`."""
    return [column] if column in (columns or []) else []


def label_row(row: dict, labels: dict) -> dict:
    """A map adding the row's corpus index and prompt instruction (and no duration when the dataset has none)."""
    return dict(labels)


def parquet_files(source: CorpusArguments) -> list[str] | None:
    """The source split's data files when they are parquet (a local file, a directory of shards or a Hub dataset),
    else None."""
    path, storage = source.dataset_name, corpus_format(source)
    if storage == "parquet":
        return [path]
    if storage != "load_dataset" or os.path.isfile(path):
        return None
    builder = load_dataset_builder(path, source.dataset_config_name, revision=source.dataset_revision)
    files = (builder.config.data_files or {}).get(source.split)
    if builder.name != "parquet" or not files:
        return None
    return list(files)


def parquet_shards(source: CorpusArguments) -> list[dict] | None:
    """Each parquet file of the source split with the row id of its first row and the columns to read (the audio,
    plus the duration column if present), from the files' footers; files past `max_samples` left out. None when the
    source is not parquet files."""
    files = parquet_files(source)
    if files is None:
        return None
    shards, offset = [], 0
    for file in files:
        with fsspec.open(file, "rb") as handle:
            metadata = pq.ParquetFile(handle).metadata
        names = metadata.schema.to_arrow_schema().names
        if source.max_samples is None or offset < source.max_samples:
            shards.append(
                {
                    "file": file,
                    "offset": offset,
                    "names": names,
                    "audio": source.audio_column_name,
                    "text": source.text_column_name,
                }
            )
        offset += metadata.num_rows
    return shards


def joined_shard_rows(
    shards: list[dict],
    continuations: dict,
    duration_column: str,
    normalize_transcripts: bool = False,
    teacher: pa.Table | None = None,
):
    """The rows of these source files that have a continuation (`read_continuations`), numbered from each file's
    first row id; a row whose transcript is not the one step 1 read there is refused (the source changed since)."""
    normalize = transcript_normalizer(normalize_transcripts)
    for shard in shards:
        columns = [shard["audio"], shard["text"], *optional(duration_column, shard["names"])]
        audio = load_dataset("parquet", data_files=[shard["file"]], split="train", streaming=True, columns=columns)
        if isinstance((audio.features or {}).get(shard["audio"]), Audio):  # read the stored bytes, never decode
            audio = audio.cast_column(shard["audio"], Audio(decode=False))
        for index, row in enumerate(audio):
            row_id = shard["offset"] + index
            if row_id in continuations:
                check_transcript(row_id, continuations[row_id][0], row[shard["text"]], normalize, shard["file"])
                seconds = row.get(duration_column)
                yield joined_row(row_id, row[shard["audio"]], continuations[row_id], seconds, teacher)


def check_transcript(row_id: int, recorded: str, now, normalize, name: str) -> None:
    """Refuse a source row whose transcript is not the one step 1 recorded for it."""
    if recorded != (normalize(now) if isinstance(now, str) else now):
        raise source_changed(name, [(row_id, recorded, now)])


def joined_row(
    row_id: int, audio: dict, continuation: tuple[str, str, int], seconds: float | None, teacher: pa.Table | None
) -> dict:
    """A joined row; `audio` is the source's `{"bytes", "path"}` cell, or a path; `continuation` a value of
    `read_continuations`, whose position picks the row's cached teacher from `teacher` (when not None)."""
    text, continuation, position = continuation
    audio = (
        {"bytes": None, "path": audio} if isinstance(audio, str) else {"bytes": audio["bytes"], "path": audio["path"]}
    )
    row = {ROW_ID: row_id, AUDIO: audio, TEXT: text, CONTINUATION: continuation, SECONDS: seconds}
    if teacher is not None:
        row.update({name: teacher.column(name)[position].as_py() for name in teacher.column_names})
    return row


def open_audio_stream(source: CorpusArguments, duration_column: str = "duration") -> IterableDataset:
    """The source corpus's audio and transcript columns (and duration column if present) streamed in row order (rows
    numbered by position, as step 1 did)."""
    columns = [source.audio_column_name, source.text_column_name]
    if is_local(source):
        stream = load_local(source, columns=columns, streaming=True)
    else:
        stream = load_split(source, columns=columns, streaming=True)
    stream = stream.select_columns([*columns, *optional(duration_column, stream.column_names)])
    if source.audio_column_name != AUDIO:
        stream = stream.rename_column(source.audio_column_name, AUDIO)
    if source.text_column_name != TEXT:
        stream = stream.rename_column(source.text_column_name, TEXT)
    if isinstance((stream.features or {}).get(AUDIO), (Audio, dict)):  # read the stored bytes, never decode
        stream = stream.cast_column(AUDIO, AUDIO_STORAGE)  # (paths, e.g. an audiofolder's, `joined_row` wraps)
    return stream.take(source.max_samples) if source.max_samples is not None else stream


def joined_rows(
    audio: IterableDataset,
    continuations: dict,
    duration_column: str,
    normalize_transcripts: bool = False,
    teacher: pa.Table | None = None,
):
    """Rows of the source stream that have a continuation, with its row id, transcript and continuation (and cached
    teacher); a row whose transcript is not the one step 1 read there is refused."""
    normalize = transcript_normalizer(normalize_transcripts)
    for row_id, row in enumerate(audio):
        if row_id in continuations:
            check_transcript(row_id, continuations[row_id][0], row[TEXT], normalize, "the source corpus")
            yield joined_row(row_id, row[AUDIO], continuations[row_id], row.get(duration_column), teacher)


def clip_seconds(audio: dict) -> float:
    """A clip's duration from its header (nothing decoded); 0 when unreadable (the collator skips and counts it)."""
    source = io.BytesIO(audio["bytes"]) if audio.get("bytes") else audio.get("path")
    try:
        with soundfile.SoundFile(source) as clip:  # faster than `soundfile.info`, which also formats a description
            return clip.frames / clip.samplerate
    except Exception:
        return 0.0


def shuffle_and_group(rows: dict, indices: list[int], seed: int, group_rows: int, max_seconds: float | None) -> dict:
    """A batched map over a buffer of rows: those over `max_seconds` dropped, the rest shuffled, cut into groups of
    `group_rows` sorted by duration (so consecutive rows, hence batches, have similar durations), the groups in a
    random order. The randomness is drawn from `seed` and the buffer's position: a replayed stream repeats it.

    (A buffer in a batched map rather than `IterableDataset.shuffle`, which splits parquet files into row-group
    shards and reopens a file for each: several times slower, and its memory grows with the number of files.)
    """
    seconds = [clip_seconds(audio) if length is None else length for audio, length in zip(rows[AUDIO], rows[SECONDS])]
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
    grouped by duration a buffer of `shuffle_buffer_size` rows at a time (clips over `max_audio_seconds` dropped;
    durations from `seconds`, else from the clips' headers)."""
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
        features=stream.features,
    )
