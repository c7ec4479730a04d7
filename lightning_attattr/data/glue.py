"""GLUE task definitions and a strict reader for the standard local GLUE layout.

The files produced by GLUE's ``download_glue_data.py`` (``<data_dir>/<TASK>/{train,dev}.tsv``) are
tab-separated without any quoting: quote characters are part of the text, and words such as
"NA" or "null" are sentences, not missing values. CoLA has no header, MRPC starts with a UTF-8
byte-order mark, MNLI has ``dev_matched``/``dev_mismatched`` instead of ``dev``. This module reads
them exactly (``csv.QUOTE_NONE``, no NA conversion, BOM stripped) and fails with an error that names
the file, line, column or value at fault: a :class:`~lightning_attattr.core.checks.DataFileError`
for a file that cannot be read as its task's format (bytes that are not UTF-8, a header line in a
CoLA file, a missing column, a bad label), a :class:`~lightning_attattr.core.checks.PathNotFoundError`
for a missing file and an :class:`~lightning_attattr.core.checks.ArgumentError` for an unknown task
or split.

Label orders follow the official AttAttr code (``examples/classifier_processer.py``).
"""

from __future__ import annotations

import codecs
import csv
import io
from dataclasses import dataclass, field
from pathlib import Path

from lightning_attattr.core.checks import ArgumentError, DataFileError, PathNotFoundError


@dataclass(frozen=True)
class GlueTask:
    """How one GLUE task is laid out on disk.

    Attributes:
        name: canonical task name (``sst2``, ``rte``, ...).
        directory: folder under the GLUE root (``SST-2``, ``RTE``, ...).
        text_columns: one or two text columns (sentence, or sentence pair).
        label_column: column holding the label.
        labels: label strings in class-index order.
        splits: split name -> file stem (``{"train": "train", "validation": "dev"}``).
        columns: column names of header-less files (CoLA); ``None`` when the file has a header.
        metrics: metric names the task reports (``acc`` always; ``f1``, ``mcc``).
    """

    name: str
    directory: str
    text_columns: tuple[str, ...]
    label_column: str
    labels: tuple[str, ...]
    splits: dict[str, str] = field(default_factory=lambda: {"train": "train", "validation": "dev"})
    columns: tuple[str, ...] | None = None
    metrics: tuple[str, ...] = ("acc",)

    @property
    def num_labels(self) -> int:
        """Number of classes."""
        return len(self.labels)


GLUE_TASKS: dict[str, GlueTask] = {
    task.name: task
    for task in (
        GlueTask("sst2", "SST-2", ("sentence",), "label", ("0", "1")),
        GlueTask("rte", "RTE", ("sentence1", "sentence2"), "label", ("entailment", "not_entailment")),
        GlueTask("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", ("0", "1"), metrics=("acc", "f1")),
        GlueTask("qqp", "QQP", ("question1", "question2"), "is_duplicate", ("0", "1"), metrics=("acc", "f1")),
        GlueTask(
            "cola",
            "CoLA",
            ("sentence",),
            "label",
            ("0", "1"),
            columns=("source", "label", "original_label", "sentence"),
            metrics=("acc", "mcc"),
        ),
        GlueTask("qnli", "QNLI", ("question", "sentence"), "label", ("entailment", "not_entailment")),
        GlueTask(
            "mnli",
            "MNLI",
            ("sentence1", "sentence2"),
            "gold_label",
            ("contradiction", "entailment", "neutral"),
            splits={"train": "train", "validation_matched": "dev_matched", "validation_mismatched": "dev_mismatched"},
        ),
    )
}
_ALIASES = {"sst-2": "sst2", "sst_2": "sst2", "mnli-m": "mnli", "mnli_matched": "mnli"}


def get_task(name: str) -> GlueTask:
    """Look a task up by name (case-insensitive; ``SST-2`` and ``sst2`` both work).

    Raises:
        ArgumentError: unknown task name (the message lists the known ones).
    """
    key = str(name).lower()
    key = _ALIASES.get(key, key)
    if key not in GLUE_TASKS:
        raise ArgumentError(f"Expected `task` to be one of {sorted(GLUE_TASKS)}, but got {name!r}.")
    return GLUE_TASKS[key]


@dataclass
class GlueSplit:
    """One split read from disk: texts and integer labels, in file order."""

    task: GlueTask
    path: Path
    text_a: list[str]
    text_b: list[str] | None
    labels: list[int]

    def __len__(self) -> int:
        return len(self.labels)


def split_path(data_dir: str | Path, task: GlueTask, split: str) -> Path:
    """Path of ``split`` of ``task`` under a GLUE root (or directly under the task folder).

    Raises:
        ArgumentError: ``split`` is not a split of ``task``.
        PathNotFoundError: neither ``<data_dir>/<TASK>/<file>.tsv`` nor ``<data_dir>/<file>.tsv`` exists.
    """
    if split not in task.splits:
        raise ArgumentError(
            f"Expected `split` of task {task.name!r} to be one of {sorted(task.splits)}, but got {split!r}."
        )
    root = Path(data_dir)
    candidates = [root / task.directory / f"{task.splits[split]}.tsv", root / f"{task.splits[split]}.tsv"]
    for path in candidates:
        if path.is_file():
            return path
    raise PathNotFoundError(
        f"No {split} file for GLUE task {task.name!r}: looked for {candidates[0]} and {candidates[1]}. "
        "Pass the folder that holds the standard GLUE layout (e.g. ../shared/data/glue)."
    )


# Column names seen in the header lines that exported copies of CoLA add (HF exports, Kaggle, pandas).
_HEADER_WORDS = frozenset(
    {"label", "labels", "sentence", "source", "sentence_source", "original_label", "label_notes", "idx", "index", "id"}
)


def _decode(path: Path) -> str:
    """The text of ``path``, decoded as UTF-8 without a leading byte-order mark (MRPC has one).

    Decoding the whole file at once (instead of through ``open(encoding=...)``) lets the error
    name the line and byte offset of the first invalid byte.

    Raises:
        DataFileError: the file holds bytes that are not UTF-8.
    """
    data = path.read_bytes()
    skip = len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0
    try:
        return data[skip:].decode("utf-8")
    except UnicodeDecodeError as err:
        offset = skip + err.start  # in the file, BOM included
        line = data.count(b"\n", 0, offset) + 1
        column = offset - (data.rfind(b"\n", 0, offset) + 1) + 1  # 1-based, in bytes
        bad = data[offset : skip + err.end]
        raise DataFileError(
            f"{path}, line {line} (byte offset {offset}, byte {column} of the line): {bad!r} is not valid UTF-8 "
            f"({err.reason}). GLUE files are UTF-8: re-encode the file (e.g. `iconv -f latin1 -t utf-8`)."
        ) from err


def _looks_like_header(row: list[str], spec: GlueTask) -> bool:
    """Whether the first ``row`` of a header-less file (CoLA) is a header line someone added.

    It is one when its label field is not a valid label and one of its fields is a column name.
    """
    assert spec.columns is not None
    label_at = spec.columns.index(spec.label_column)
    if len(row) > label_at and row[label_at] in spec.labels:
        return False
    names = _HEADER_WORDS | {c.lower() for c in spec.columns}
    return any(value.strip().lower() in names for value in row)


def read_glue_split(data_dir: str | Path, task: str | GlueTask, split: str) -> GlueSplit:
    """Read one split of a GLUE task from a local directory in the standard layout.

    Args:
        data_dir: the GLUE root (holding ``SST-2/``, ``RTE/``, ...) or the task's own folder.
        task: task name or :class:`GlueTask`.
        split: ``train``, ``validation`` (``validation_matched`` / ``validation_mismatched`` for MNLI).

    Returns:
        A :class:`GlueSplit` with the texts verbatim and labels as class indices.

    Raises:
        ArgumentError: unknown task or split.
        PathNotFoundError: the split's file does not exist.
        DataFileError: bytes that are not UTF-8, a header line in a CoLA file, a missing column, a
            row with the wrong number of fields, an empty split, or a label outside the task's
            label set (the message names the file, line and value).
    """
    spec = task if isinstance(task, GlueTask) else get_task(task)
    path = split_path(data_dir, spec, split)
    reader = csv.reader(io.StringIO(_decode(path), newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
        rows = list(reader)
    except csv.Error as err:  # e.g. a field beyond csv.field_size_limit()
        raise DataFileError(f"{path}, line {reader.line_num}: not a tab-separated GLUE file ({err}).") from err
    if spec.columns is None:
        if not rows:
            raise DataFileError(f"{path} is empty: expected a header line and at least one example.")
        header, rows, first_line = rows[0], rows[1:], 2
    else:
        if rows and _looks_like_header(rows[0], spec):
            first = "\t".join(rows[0])
            raise DataFileError(
                f"{path}, line 1: {first!r} looks like a header line, but GLUE's {spec.directory} "
                f"files have no header line (their columns are {', '.join(spec.columns)}): remove the first line."
            )
        header, first_line = list(spec.columns), 1
    wanted = [*spec.text_columns, spec.label_column]
    missing = [c for c in wanted if c not in header]
    if missing:
        raise DataFileError(f"{path} has no column {missing[0]!r} (task {spec.name!r}); its columns are {header}.")
    index = {c: header.index(c) for c in wanted}
    label_index = {label: i for i, label in enumerate(spec.labels)}
    text_a, text_b, labels = [], [], []
    for line, row in enumerate(rows, start=first_line):
        if not row:  # a trailing empty line
            continue
        if len(row) != len(header):
            raise DataFileError(f"{path}, line {line}: expected {len(header)} tab-separated fields, got {len(row)}.")
        label = row[index[spec.label_column]]
        if label not in label_index:
            raise DataFileError(
                f"{path}, line {line}: label {label!r} is not one of the {spec.name} labels {list(spec.labels)} "
                f"(column {spec.label_column!r})."
            )
        text_a.append(row[index[spec.text_columns[0]]])
        if len(spec.text_columns) > 1:
            text_b.append(row[index[spec.text_columns[1]]])
        labels.append(label_index[label])
    if not labels:
        raise DataFileError(f"{path} has no examples: the {split} split of {spec.name!r} is empty.")
    return GlueSplit(spec, path, text_a, text_b if len(spec.text_columns) > 1 else None, labels)
