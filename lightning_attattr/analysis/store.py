"""Results folders of ``analyze.py``: atomic files, a lock, an argument fingerprint and resumable per-example parts.

No Lightning here. A :class:`ResultsFolder` guarantees what a long analysis needs:

- **nothing half-written**: every file is written to a temporary name in the same folder and then
  renamed (:func:`atomic_write`), so a reader (or a killed run) sees the old file or the new one;
- **one run at a time**: the main process holds an exclusive lock on ``<folder>/.lock`` (the
  ``filelock`` package: ``flock`` on POSIX, ``msvcrt`` locking on Windows) for the whole run; a
  second run on the same folder fails at once with a clear message (the lock dies with its process,
  so a killed run never leaves a stale lock; a run that ends removes the lock file);
- **no mixing**: ``<folder>/manifest.json`` records the subcommand, the arguments that decide the
  results and the layout of the parts (:data:`PARTS_FORMAT`); a rerun with other arguments, or on a
  folder written with another parts layout, is refused (or, with ``overwrite=True``, the folder's
  previous results are removed first); a run that started a folder and failed on a user error (an
  option that cannot work, found only while it ran) removes what it wrote, so that its retry with
  corrected options is not refused;
- **resume**: per-example results go to :class:`PartStore` files (one per batch, keyed by example
  index); a rerun computes only the examples that have no part yet;
- **nothing unpickled**: parts are safetensors files (the tensors) whose metadata holds the rest as
  JSON, so reading a results folder received from someone else cannot run code; a part file that is
  not of this layout (a pickle of an older version, anything crafted) is refused with one line
  naming it (:class:`PartFormatError`).
"""

from __future__ import annotations

import csv
import functools
import json
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal, TextIO, overload

import torch
from torch import Tensor

from lightning_attattr.core.checks import ArgumentError, UserError

MANIFEST = "manifest.json"
LOCK = ".lock"
PARTS = "parts"
#: Layout of the per-example parts, recorded in ``manifest.json``: 1 = ``torch.save`` pickles
#: (``part-*.pt``, no longer read), 2 = safetensors with the non-tensor values as JSON metadata.
PARTS_FORMAT = 2
PART_SUFFIX = ".safetensors"
_PART_KEY = "attattr_part"  # safetensors metadata: the part's structure as JSON, tensors by reference
_FORMAT_KEY = "attattr_parts_format"


class FolderInUseError(UserError, RuntimeError):
    """Another process holds the results folder's lock."""


class FolderMismatchError(UserError, ValueError):
    """The results folder holds results of other arguments."""


class PartFormatError(UserError, ValueError):
    """A file in a results folder's ``parts/`` that is not a part of the current layout (never unpickled)."""


@overload
def atomic_write(path: str | Path, write: Callable[[TextIO], Any], binary: Literal[False] = False) -> Path: ...
@overload
def atomic_write(path: str | Path, write: Callable[[BinaryIO], Any], binary: Literal[True]) -> Path: ...
def atomic_write(path: str | Path, write: Callable[[Any], Any], binary: bool = False) -> Path:
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
        handle: IO[Any] = open(tmp, "wb") if binary else open(tmp, "w", encoding="utf-8", newline="")
        with handle as f:
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

    def write(f: TextIO) -> None:
        json.dump(_jsonable(obj), f, indent=2, sort_keys=False)
        f.write("\n")

    return atomic_write(path, write)


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
        paths.append(atomic_write(target, functools.partial(fig.savefig, format=fmt, dpi=120), binary=True))
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

    Values are ``[n, ...]`` tensors or lists of ``n`` per-example values built from tensors, ``str``,
    ``int``, ``float``, ``bool``, ``None``, lists, tuples and dicts; they come back exactly (dtypes,
    shapes, 0-dim and empty tensors, tuples, non-string dict keys). A part is one safetensors file:
    the tensors, and the structure as JSON in its metadata with each tensor as a reference
    (:func:`save_part`), so reading parts never unpickles anything.

    Files are named by the writing rank and a random suffix, so ranks never collide; a rerun reads
    the union. An example written twice (a distributed sampler that repeats examples, or a
    rerun after a crash between write and bookkeeping) keeps one copy: the results per example are
    deterministic, so any copy will do.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _files(self) -> list[Path]:
        """Every ``part-*`` file: one of another layout is refused when read, never skipped."""
        return sorted(p for p in self.path.glob("part-*") if p.is_file()) if self.path.exists() else []

    def done(self) -> set[int]:
        """Indices of the examples that already have results.

        Raises:
            PartFormatError: a part file is not of the current layout.
        """
        out: set[int] = set()
        for file in self._files():
            out.update(int(i) for i in read_part_index(file).tolist())
        return out

    def write(self, index: Tensor, record: Mapping[str, Any], rank: int = 0) -> Path:
        """Atomically write the results of the examples ``index`` (``[n]``); values: ``[n, ...]`` tensors or lists."""
        self.path.mkdir(parents=True, exist_ok=True)
        data = save_part({"index": index.detach().long().cpu(), **dict(record)})
        name = f"part-{int(index.min()) if len(index) else 0:08d}-r{rank}-{uuid.uuid4().hex[:8]}{PART_SUFFIX}"
        return atomic_write(self.path / name, lambda f: f.write(data), binary=True)

    def load(self, indices: Sequence[int]) -> dict[str, Any]:
        """Results of ``indices``, in that order: tensors of one shape stacked to ``[len(indices), ...]``, else lists.

        Raises:
            RuntimeError: an example has no result (the stage did not finish).
            PartFormatError: a part file is not of the current layout.
        """
        found: dict[int, dict[str, Any]] = {}
        for file in self._files():
            part = load_part(file)
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


# ----------------------------------------------------------------------------- part files
def save_part(payload: Mapping[str, Any]) -> bytes:
    """A part as safetensors bytes: the tensors, and ``payload``'s structure as JSON metadata.

    In the JSON each tensor is ``{"__tensor__": name}``, a tuple ``{"__tuple__": [...]}``, and a dict
    with a key that is not a string (or starts with ``__``) ``{"__dict__": [[key, value], ...]}``;
    tensors are stored with their dtype and shape (0-dim and empty ones too).

    Raises:
        TypeError: a value of another type (an object only pickling could store), or a tensor dtype
            safetensors cannot hold.
    """
    from safetensors.torch import save

    tensors: dict[str, Tensor] = {}
    structure = _encode(dict(payload), tensors, "payload")
    try:
        return save(tensors, metadata={_FORMAT_KEY: str(PARTS_FORMAT), _PART_KEY: json.dumps(structure)})
    except (ValueError, TypeError, KeyError) as err:
        raise TypeError(f"Cannot store a results part: {err}") from err


def load_part(file: str | Path) -> dict[str, Any]:
    """Read a part written by :func:`save_part`; nothing is unpickled.

    Raises:
        PartFormatError: not a safetensors file of the current part layout, or a structure that does
            not fit its tensors (``index`` ``[n]`` of int64, every value ``n`` rows).
    """
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            structure = _part_structure(file, handle.metadata())
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        part = _decode(structure, tensors)
    except PartFormatError:
        raise
    except Exception as err:  # safetensors header or JSON errors, references to missing tensors, wrong types
        raise _part_error(file, f"{type(err).__name__}: {err}") from err
    _check_rows(file, part)
    return part


def read_part_index(file: str | Path) -> Tensor:
    """The ``index`` ``[n]`` of a part (only that tensor is read).

    Raises:
        PartFormatError: see :func:`load_part`.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as handle:
            structure = _part_structure(file, handle.metadata())
            reference = structure.get("index") if isinstance(structure, dict) else None
            name = reference.get("__tensor__") if isinstance(reference, dict) else None
            index = handle.get_tensor(name) if isinstance(name, str) else None
    except PartFormatError:
        raise
    except Exception as err:
        raise _part_error(file, f"{type(err).__name__}: {err}") from err
    if not isinstance(index, Tensor) or index.dtype != torch.int64 or index.dim() != 1:
        raise _part_error(file, "no int64 `index` of shape [n]")
    return index


def save_tensors(path: str | Path, tensors: Mapping[str, Tensor]) -> Path:
    """Atomically write named tensors as a safetensors file (e.g. a stage's plan next to its parts)."""
    from safetensors.torch import save

    data = save({k: v.detach().cpu().clone(memory_format=torch.contiguous_format) for k, v in tensors.items()})
    return atomic_write(path, lambda f: f.write(data), binary=True)


def load_tensors(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file written by :func:`save_tensors`; nothing is unpickled.

    Raises:
        PartFormatError: not a safetensors file.
    """
    from safetensors.torch import load

    try:
        return load(Path(path).read_bytes())
    except Exception as err:
        raise _part_error(path, f"{type(err).__name__}: {err}") from err


def _part_structure(file: str | Path, metadata: Mapping[str, str] | None) -> Any:
    metadata = metadata or {}
    if _PART_KEY not in metadata:
        raise _part_error(file, "a safetensors file without the part structure")
    if metadata.get(_FORMAT_KEY) != str(PARTS_FORMAT):
        raise _part_error(file, f"parts format {metadata.get(_FORMAT_KEY)!r}, this version reads {PARTS_FORMAT}")
    return json.loads(metadata[_PART_KEY])


def _check_rows(file: str | Path, part: Any) -> None:
    index = part.get("index") if isinstance(part, dict) else None
    if not isinstance(index, Tensor) or index.dtype != torch.int64 or index.dim() != 1:
        raise _part_error(file, "no int64 `index` of shape [n]")
    for key, value in part.items():
        if isinstance(value, Tensor):
            rows = value.shape[0] if value.dim() else None
        else:
            rows = len(value) if isinstance(value, (list, tuple)) else None
        if rows != len(index):
            raise _part_error(file, f"{key!r} does not have one row per example of its index ({len(index)})")


def _part_error(file: str | Path, detail: str) -> PartFormatError:
    older = " (a pickle of an older version, which is never unpickled)" if Path(file).suffix == ".pt" else ""
    return PartFormatError(
        f"Expected {str(file)!r} to be a results part of this version (safetensors, parts format {PARTS_FORMAT}), "
        f"but it is not{older}: {' '.join(detail.split())[:200]}. It was not loaded; rerun with `--overwrite true` "
        "to replace the folder's results, or remove the file."
    )


_TAGS = ("__tensor__", "__tuple__", "__dict__")


def _encode(value: Any, tensors: dict[str, Tensor], where: str) -> Any:
    if isinstance(value, Tensor):
        name = "index" if where == "payload.index" else f"t{len(tensors)}"
        # a contiguous copy of its own: safetensors refuses views and tensors that share memory
        tensors[name] = value.detach().cpu().clone(memory_format=torch.contiguous_format)
        return {"__tensor__": name}
    if value is None or type(value) in (bool, int, float, str):
        return value
    if type(value) is list:
        return [_encode(v, tensors, f"{where}[{k}]") for k, v in enumerate(value)]
    if type(value) is tuple:
        return {"__tuple__": [_encode(v, tensors, f"{where}[{k}]") for k, v in enumerate(value)]}
    if isinstance(value, Mapping):
        if all(type(k) is str and not k.startswith("__") for k in value):
            return {k: _encode(v, tensors, f"{where}.{k}") for k, v in value.items()}
        pairs = [[_encode(k, tensors, where), _encode(v, tensors, f"{where}.{k}")] for k, v in value.items()]
        return {"__dict__": pairs}
    raise TypeError(
        f"Cannot store `{where}` of type {type(value).__name__} in a results part: only tensors, str, int, float, "
        "bool, None, lists, tuples and dicts."
    )


def _decode(value: Any, tensors: Mapping[str, Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) == 1 and next(iter(value)) in _TAGS:
        tag, inner = next(iter(value.items()))
        if tag == "__tensor__":
            return tensors[inner]
        if tag == "__tuple__":
            return tuple(_decode(v, tensors) for v in inner)
        return {_decode(k, tensors): _decode(v, tensors) for k, v in inner}
    return {k: _decode(v, tensors) for k, v in value.items()}


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
        self._started_here = False  # this run wrote the manifest of an empty or new folder
        self._made_folder = False  # this run created the folder

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
        self._made_folder = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        self._acquire()
        try:
            self._check_manifest()
        except BaseException:
            self.close()
            raise
        return self

    def _acquire(self) -> None:
        from filelock import FileLock, Timeout

        lock = FileLock(str(self.path / LOCK))
        try:
            lock.acquire(blocking=False)
        except Timeout:
            raise FolderInUseError(
                f"Expected `output_dir` {str(self.path)!r} to be free, but {self._owner()} is writing to it; wait for "
                "that run to finish or choose another `--output_dir`."
            ) from None
        self._lock = lock
        try:  # who holds the folder, for the message of a second run (best effort: Windows locks the file)
            (self.path / LOCK).write_text(f"process {os.getpid()}", encoding="utf-8")
        except OSError:
            pass

    def _owner(self) -> str:
        try:
            return (self.path / LOCK).read_text(encoding="utf-8").strip() or "another process"
        except (OSError, ValueError):
            return "another process"

    def _check_manifest(self) -> None:
        manifest = self.path / MANIFEST
        wanted = {"kind": self.kind, "parts_format": PARTS_FORMAT, "arguments": self.arguments}
        if manifest.exists():
            try:
                old = json.loads(manifest.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                old = None
            if old == wanted:
                return
            if not self.overwrite:
                changed = _differences(old, wanted) if isinstance(old, dict) else ["manifest.json (unreadable)"]
                if changed == ["parts_format"]:
                    found = old.get("parts_format", 1) if isinstance(old, dict) else None
                    raise FolderMismatchError(
                        f"Expected `output_dir` {str(self.path)!r} to hold results of this version, but its "
                        f"per-example parts have an older layout (parts format {found}, this version writes "
                        f"{PARTS_FORMAT}; they are not read); pass `--overwrite true` to replace them or choose "
                        "another `--output_dir`."
                    )
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
        self._started_here = True

    def _clear(self) -> None:
        for child in self.path.iterdir():
            if child.name == LOCK:
                continue
            if child.is_dir():
                shutil.rmtree(child)
            else:
                child.unlink()

    def close(self) -> None:
        """Release the lock and remove the lock file (idempotent)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
            try:
                (self.path / LOCK).unlink()
            except OSError:  # already gone, or locked by another process (Windows)
                pass

    def __enter__(self) -> ResultsFolder:
        return self.open()

    def __exit__(self, exc_type: Any, exc: BaseException | None, traceback: Any) -> None:
        """Release the lock; after a user error in a run that started this folder, remove what the run wrote."""
        from lightning_attattr.core.checks import find_user_error

        failed = exc is not None and find_user_error(exc) is not None
        if failed and self.main and self._started_here and self._lock is not None:
            self._clear()  # no result: nothing to resume, and a kept manifest would refuse the corrected retry
            self.close()
            if self._made_folder:
                shutil.rmtree(self.path, ignore_errors=True)
            return
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
