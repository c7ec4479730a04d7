"""GLUE task definitions and a strict reader for the standard local GLUE layout.

The files produced by GLUE's ``download_glue_data.py`` (``<data_dir>/<TASK>/{train,dev}.tsv``) are
tab-separated without any quoting: quote characters are part of the text, and words such as
"NA" or "null" are sentences, not missing values. CoLA has no header, MRPC starts with a UTF-8
byte-order mark, MNLI has ``dev_matched``/``dev_mismatched`` instead of ``dev``. This module reads
them exactly (``csv.QUOTE_NONE``, no NA conversion, BOM stripped) and fails with an error that names
the file, line, column or value at fault.

Label orders follow the official AttAttr code (``examples/classifier_processer.py``).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path


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
        ValueError: unknown task name (the message lists the known ones).
    """
    key = str(name).lower()
    key = _ALIASES.get(key, key)
    if key not in GLUE_TASKS:
        raise ValueError(f"Expected `task` to be one of {sorted(GLUE_TASKS)}, but got {name!r}.")
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
    """Path of ``split`` of ``task`` under a GLUE root (or directly under the task folder)."""
    if split not in task.splits:
        raise ValueError(
            f"Expected `split` of task {task.name!r} to be one of {sorted(task.splits)}, but got {split!r}."
        )
    root = Path(data_dir)
    candidates = [root / task.directory / f"{task.splits[split]}.tsv", root / f"{task.splits[split]}.tsv"]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"No {split} file for GLUE task {task.name!r}: looked for {candidates[0]} and {candidates[1]}. "
        "Pass the folder that holds the standard GLUE layout (e.g. ../shared/data/glue)."
    )


def read_glue_split(data_dir: str | Path, task: str | GlueTask, split: str) -> GlueSplit:
    """Read one split of a GLUE task from a local directory in the standard layout.

    Args:
        data_dir: the GLUE root (holding ``SST-2/``, ``RTE/``, ...) or the task's own folder.
        task: task name or :class:`GlueTask`.
        split: ``train``, ``validation`` (``validation_matched`` / ``validation_mismatched`` for MNLI).

    Returns:
        A :class:`GlueSplit` with the texts verbatim and labels as class indices.

    Raises:
        ValueError: unknown task or split, a missing column, a row with the wrong number of
            fields, an empty split, or a label outside the task's label set (the message names the
            file, line and value).
        FileNotFoundError: the split's file does not exist.
    """
    spec = task if isinstance(task, GlueTask) else get_task(task)
    path = split_path(data_dir, spec, split)
    with path.open(encoding="utf-8-sig", newline="") as f:  # utf-8-sig drops MRPC's byte-order mark
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    if spec.columns is None:
        if not rows:
            raise ValueError(f"{path} is empty: expected a header line and at least one example.")
        header, rows, first_line = rows[0], rows[1:], 2
    else:
        header, first_line = list(spec.columns), 1
    wanted = [*spec.text_columns, spec.label_column]
    missing = [c for c in wanted if c not in header]
    if missing:
        raise ValueError(f"{path} has no column {missing[0]!r} (task {spec.name!r}); its columns are {header}.")
    index = {c: header.index(c) for c in wanted}
    label_index = {label: i for i, label in enumerate(spec.labels)}
    text_a, text_b, labels = [], [], []
    for line, row in enumerate(rows, start=first_line):
        if not row:  # a trailing empty line
            continue
        if len(row) != len(header):
            raise ValueError(f"{path}, line {line}: expected {len(header)} tab-separated fields, got {len(row)}.")
        label = row[index[spec.label_column]]
        if label not in label_index:
            raise ValueError(
                f"{path}, line {line}: label {label!r} is not one of the {spec.name} labels {list(spec.labels)}."
            )
        text_a.append(row[index[spec.text_columns[0]]])
        if len(spec.text_columns) > 1:
            text_b.append(row[index[spec.text_columns[1]]])
        labels.append(label_index[label])
    if not labels:
        raise ValueError(f"{path} has no examples: the {split} split of {spec.name!r} is empty.")
    return GlueSplit(spec, path, text_a, text_b if len(spec.text_columns) > 1 else None, labels)
