"""Results folders of ``analyze.py``: atomic files, a lock, an argument fingerprint and resumable per-example parts.

No Lightning here. A :class:`ResultsFolder` guarantees what a long analysis needs:

- **nothing half-written**: every file is written to a temporary name in the same folder and then
  renamed (:func:`atomic_write`), so a reader (or a killed run) sees the old file or the new one;
- **one run at a time**: the main process holds an exclusive ``fcntl`` lock on ``<folder>/.lock``
  for the whole run; a second run on the same folder fails at once with a clear message (the lock
  dies with its process, so a killed run never leaves a stale lock);
- **no mixing**: ``<folder>/manifest.json`` records the subcommand and the arguments that decide
  the results; a rerun with other arguments is refused (or, with ``overwrite=True``, the folder's
  previous results are removed first);
- **resume**: per-example results go to :class:`PartStore` files (one per batch, keyed by example
  index); a rerun computes only the examples that have no part yet.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lightning_attattr.core.checks import ArgumentError, UserError

MANIFEST = "manifest.json"
LOCK = ".lock"
PARTS = "parts"


class FolderInUseError(UserError, RuntimeError):
    """Another process holds the results folder's lock."""


class FolderMismatchError(UserError, ValueError):
    """The results folder holds results of other arguments."""


def atomic_write(path: str | Path, write: Callable[[io.IOBase], Any], binary: bool = False) -> Path:
    """Write ``path`` through a temporary file in the same folder and an atomic rename.

    Args:
        path: the destination file (its folder must exist).
        write: called with the open temporary file.
        binary: open the temporary file in binary mode.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8", "newline": ""})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON (tensors become lists)."""
    return atomic_write(path, lambda f: json.dump(_jsonable(obj), f, indent=2, sort_keys=False) or f.write("\n"))


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(text))


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> Path:
    """Atomically write a CSV table with a header row."""

    def write(f: Any) -> None:
        out = csv.writer(f)
        out.writerow(header)
        out.writerows(rows)

    return atomic_write(path, write)


def save_figure(fig: Any, stem: str | Path, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Atomically save a matplotlib figure as ``stem.png`` and ``stem.svg``, then close it."""
    import matplotlib.pyplot as plt

    paths = []
    for fmt in formats:
        target = Path(f"{stem}.{fmt}")
        paths.append(atomic_write(target, lambda f, fmt=fmt: fig.savefig(f, format=fmt, dpi=120), binary=True))
    plt.close(fig)
    return paths


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        return obj.tolist()
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and obj != obj:  # NaN is not JSON
        return None
    return obj


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += _differences(old.get(key), new.get(key), f"{prefix}.{key}" if prefix else str(key))
        return out
    return [] if old == new else [prefix or "(all)"]


class PartStore:
    """Per-example results of one stage, one file per batch: ``{"index": [n], key: [n, ...]}``.

    Files are named by the writing rank and a random suffix, so ranks never collide; a rerun reads
    the union. An example written twice (a distributed sampler that repeats examples, or a
    rerun after a crash between write and bookkeeping) keeps one copy: the results per example are
    deterministic, so any copy will do.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _files(self) -> list[Path]:
        return sorted(self.path.glob("part-*.pt")) if self.path.exists() else []

    def done(self) -> set[int]:
        """Indices of the examples that already have results."""
        out: set[int] = set()
        for file in self._files():
            out.update(int(i) for i in torch.load(file, weights_only=True)["index"])
        return out

    def write(self, index: Tensor, record: Mapping[str, Any], rank: int = 0) -> Path:
        """Atomically write the results of the examples ``index`` (``[n]``); values: ``[n, ...]`` tensors or lists."""
        self.path.mkdir(parents=True, exist_ok=True)
        payload = {"index": index.detach().long().cpu(), **{k: _cpu(v) for k, v in record.items()}}
        name = f"part-{int(index.min()) if len(index) else 0:08d}-r{rank}-{uuid.uuid4().hex[:8]}.pt"
        return atomic_write(self.path / name, lambda f: torch.save(payload, f), binary=True)

    def load(self, indices: Sequence[int]) -> dict[str, Any]:
        """Results of ``indices``, in that order: tensors of one shape stacked to ``[len(indices), ...]``, else lists.

        Raises:
            RuntimeError: an example has no result (the stage did not finish).
        """
        found: dict[int, dict[str, Any]] = {}
        for file in self._files():
            part = torch.load(file, weights_only=False)
            for row, example in enumerate(part["index"].tolist()):
                if example not in found:
                    found[example] = {k: v[row] for k, v in part.items() if k != "index"}
        missing = [i for i in indices if i not in found]
        if missing:
            raise RuntimeError(f"{len(missing)} example(s) of {self.path} have no results, e.g. {missing[:5]}.")
        rows = [found[i] for i in indices]
        out: dict[str, Any] = {}
        for key in rows[0] if rows else ():
            values = [r[key] for r in rows]
            same = all(isinstance(v, Tensor) and v.shape == values[0].shape for v in values)
            out[key] = torch.stack(values) if same else values  # per-example shapes differ: a list
        return out

    def clear(self) -> None:
        """Remove every part of this stage."""
        shutil.rmtree(self.path, ignore_errors=True)


def _cpu(value: Any) -> Any:
    return value.detach().cpu() if isinstance(value, Tensor) else value


class ResultsFolder:
    """One analysis run's output folder (see the module docstring).

    Args:
        path: the folder (created if missing).
        kind: the subcommand (``"heads"``, ...), part of the fingerprint.
        arguments: everything that decides the results (model, checkpoint, data, options), JSON-able.
        overwrite: when the folder holds results of other arguments, delete them instead of refusing.
        main: this process writes the manifest and holds the lock (rank zero); other ranks only read
            and write parts.
    """

    def __init__(
        self, path: str | Path, kind: str, arguments: Mapping[str, Any], overwrite: bool = False, main: bool = True
    ) -> None:
        self.path = Path(path)
        self.kind = kind
        self.arguments = _jsonable(dict(arguments))
        self.overwrite = overwrite
        self.main = main
        self._lock: Any = None

    # ----------------------------------------------------------------- lifecycle
    def open(self) -> ResultsFolder:
        """Create, lock and check the folder; returns ``self``.

        Raises:
            ArgumentError: ``path`` exists and is not a folder.
            FolderInUseError: another run holds the lock.
            FolderMismatchError: the folder holds results of other arguments and ``overwrite`` is off.
        """
        if self.path.exists() and not self.path.is_dir():
            raise ArgumentError(f"Expected `output_dir` to be a folder, but {str(self.path)!r} is a file.")
        if not self.main:
            return self
        self.path.mkdir(parents=True, exist_ok=True)
        self._acquire()
        try:
            self._check_manifest()
        except BaseException:
            self.close()
            raise
        return self

    def _acquire(self) -> None:
        import fcntl

        handle = open(self.path / LOCK, "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            handle.close()
            raise FolderInUseError(
                f"Expected `output_dir` {str(self.path)!r} to be free, but {owner} is writing to it; wait for that "
                "run to finish or choose another `--output_dir`."
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}")
        handle.flush()
        self._lock = handle

    def _check_manifest(self) -> None:
        manifest = self.path / MANIFEST
        wanted = {"kind": self.kind, "arguments": self.arguments}
        if manifest.exists():
            try:
                old = json.loads(manifest.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                old = None
            if old == wanted:
                return
            if not self.overwrite:
                changed = _differences(old, wanted) if isinstance(old, dict) else ["manifest.json (unreadable)"]
                raise FolderMismatchError(
                    f"Expected `output_dir` {str(self.path)!r} to be empty or to hold a run with the same arguments, "
                    f"but it holds results of other arguments (differing: {', '.join(changed[:6])}); choose another "
                    "`--output_dir` or pass `--overwrite true` to replace them."
                )
            self._clear()
        elif any(p.name not in (LOCK,) for p in self.path.iterdir()):
            if not self.overwrite:
                raise FolderMismatchError(
                    f"Expected `output_dir` {str(self.path)!r} to be empty or a results folder of analyze.py, but it "
                    "holds other files; choose another `--output_dir` or pass `--overwrite true` to empty it."
                )
            self._clear()
        write_json(manifest, wanted)

    def _clear(self) -> None:
        for child in self.path.iterdir():
            if child.name == LOCK:
                continue
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()

    def close(self) -> None:
        """Release the lock (idempotent)."""
        if self._lock is not None:
            import fcntl

            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None

    def __enter__(self) -> ResultsFolder:
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ----------------------------------------------------------------- contents
    def file(self, name: str) -> Path:
        """The path of ``name`` inside the folder (sub-folders are created)."""
        path = self.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def parts(self, stage: str) -> PartStore:
        """The per-example store of ``stage``."""
        return PartStore(self.path / PARTS / stage)

    def log(self, line: str) -> None:
        """Append a line to ``progress.log`` (main process only)."""
        if not self.main:
            return
        import datetime

        stamp = datetime.datetime.now().isoformat(timespec="seconds")
        with open(self.path / "progress.log", "a", encoding="utf-8") as f:
            f.write(f"{stamp} {line}\n")
