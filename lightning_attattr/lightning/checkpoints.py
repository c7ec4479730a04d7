"""Self-contained Lightning checkpoints of :class:`~lightning_attattr.lightning.classifier.AttAttrClassifier`.

Besides Lightning's own content (weights, optimizer and scheduler state, loop and callback state,
hyperparameters), every checkpoint written by the classifier holds

- ``attattr_model_config``: the Hugging Face model config as a dict (without the pruning record),
  so that loading rebuilds the model without the hub or the original model folder;
- ``attattr_pruned_heads``: heads removed by structural pruning, ``{layer: [original heads]}``;
- ``attattr_tokenizer_files``: the tokenizer's files (``save_pretrained`` output, a few hundred
  KB for BERT) when the data module had a tokenizer, for token labels in the analysis.

Every value above is a tensor or a plain container (dict, list, str, bytes, numbers), so a
checkpoint loads with ``torch.load(weights_only=True)``, and this module reads checkpoints that way
by default: a file whose pickle holds other objects is refused, never unpickled (``weights_only=False``
is the explicit opt-in, for checkpoints you trust). It reads checkpoints with a clear error for a
missing file or a file that is not a checkpoint, checks that a checkpoint fits the current run
(same task and label count) before anything is written. Exporting a checkpoint as a Hugging Face
directory lives in :mod:`lightning_attattr.export` (it loads the LightningModule, which imports this
module, never the other way round).
"""

from __future__ import annotations

import pickle
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any

import torch

from lightning_attattr.core.adapter import PRUNED_HEADS_KEY
from lightning_attattr.core.checks import CheckpointError, check_existing_file

if TYPE_CHECKING:
    from transformers import PreTrainedModel

MODEL_CONFIG_KEY = "attattr_model_config"
PRUNED_HEADS_CHECKPOINT_KEY = "attattr_pruned_heads"
TOKENIZER_KEY = "attattr_tokenizer_files"
#: tokenizer files larger than this are not embedded (sentencepiece models of huge vocabularies)
MAX_TOKENIZER_BYTES = 32 * 2**20


def model_config_dict(model: PreTrainedModel) -> dict[str, Any]:
    """The model's config as a plain dict for ``AutoConfig.for_model``, without the pruning record.

    The pruned structure travels separately (:data:`PRUNED_HEADS_CHECKPOINT_KEY`) and is applied
    to the full-size model built from this config.
    """
    config = model.config.to_dict()
    config.pop(PRUNED_HEADS_KEY, None)
    config.pop("transformers_version", None)
    return config


#: checkpoint keys where Lightning stores the arguments of the module and the data module
HPARAMS_KEYS = ("hyper_parameters", "datamodule_hyper_parameters")
#: Help of ``--weights_only`` in both CLIs (default ``true``) and of ``weights_only`` in the analysis docstrings.
WEIGHTS_ONLY_HELP = (
    "Read --ckpt_path with torch.load(weights_only=True): tensors and plain values only, which is all "
    "the checkpoints of this project hold; a file with other objects is refused unread. `false` "
    "unpickles the file fully, which executes code from the file: only for checkpoints you trust."
)


def plain_hyperparameters(checkpoint: dict[str, Any]) -> None:
    """Store path arguments of the module and data module as ``str`` (in place).

    ``save_hyperparameters`` keeps arguments as given; a ``pathlib.Path`` would make the checkpoint
    need full unpickling, while everything else this project stores loads with ``weights_only=True``.
    """
    for key in HPARAMS_KEYS:
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint[key] = _paths_as_str(checkpoint[key])


def _paths_as_str(value: Any) -> Any:
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {k: _paths_as_str(v) for k, v in value.items()}
    if type(value) in (list, tuple):
        return type(value)(_paths_as_str(v) for v in value)
    return value


def tokenizer_files(tokenizer: Any) -> dict[str, bytes] | None:
    """The files of ``tokenizer.save_pretrained`` as ``{name: bytes}``, or ``None`` (no tokenizer, too large)."""
    if tokenizer is None or not hasattr(tokenizer, "save_pretrained"):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        files = {path.name: path.read_bytes() for path in Path(tmp).iterdir() if path.is_file()}
    if sum(len(b) for b in files.values()) > MAX_TOKENIZER_BYTES:
        return None
    return files


def tokenizer_from_files(files: Mapping[str, bytes]) -> Any:
    """Rebuild a tokenizer from :func:`tokenizer_files` output."""
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        write_files(files, tmp)
        return AutoTokenizer.from_pretrained(tmp)


def write_files(files: Mapping[str, bytes], directory: str | Path) -> None:
    """Write ``{name: bytes}`` into ``directory`` (created if missing)."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (target / Path(name).name).write_bytes(data)  # names only: no path components from the file


def read_checkpoint(
    path: str | Path, name: str = "checkpoint_path", *, weights_only: bool | None = True
) -> dict[str, Any]:
    """Load a Lightning checkpoint on the CPU (memory-mapped, so large weights are not read yet).

    By default nothing in the file is unpickled beyond tensors and plain containers (``torch.load``
    with ``weights_only=True``): every checkpoint this project writes loads that way, and a file
    that holds other objects (which full unpickling would create by running code from the file) is
    refused. ``weights_only=False`` is the explicit opt-in to full unpickling, for checkpoints you
    trust that hold other objects.

    Args:
        path: the ``.ckpt`` file.
        name: the argument named in error messages.
        weights_only: ``True`` (default; ``None`` means the same): tensors and plain containers
            only. ``False``: full unpickling, which executes code from the file.

    Raises:
        PathNotFoundError: the file does not exist.
        CheckpointError: the file cannot be read by ``torch.load``, holds objects that only full
            unpickling can create, or is not a Lightning checkpoint.
    """
    file = check_existing_file(name, path, "a Lightning checkpoint (.ckpt)")
    safe = weights_only is None or bool(weights_only)
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=safe, mmap=True)
    except pickle.UnpicklingError as err:
        raise _load_error(name, path, err, safe) from err
    except Exception:  # an old (non-zip) torch.save file cannot be memory-mapped: read it whole
        try:
            checkpoint = torch.load(file, map_location="cpu", weights_only=safe)
        except Exception as err:  # pickle or zip errors: not a file torch can read
            raise _load_error(name, path, err, safe) from err
    if not isinstance(checkpoint, Mapping) or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"Expected `{name}` to be a Lightning checkpoint (a dict with a 'state_dict'), but {str(path)!r} is not."
        )
    return dict(checkpoint)


def _load_error(name: str, path: str | Path, err: Exception, safe: bool) -> CheckpointError:
    """The one-line error for a file ``torch.load`` refused: unsafe content, or not a torch file at all."""
    message = str(err)
    weights_only_refusal = safe and isinstance(err, pickle.UnpicklingError) and "weights only" in message.lower()
    found = re.search(r"GLOBAL ([\w.]+)", message) if weights_only_refusal else None
    if found is not None:
        return CheckpointError(
            f"Expected `{name}` to hold only tensors and plain Python values, but {str(path)!r} holds other objects "
            f"(e.g. `{found.group(1)}`) that only full unpickling can create, which runs code from the file: it was "
            "not loaded. Pass `--weights_only false` (Python: `weights_only=False`) only for a checkpoint you trust."
        )
    detail = re.search(r"WeightsUnpickler error:\s*(\S[^\n]*)", message) if weights_only_refusal else None
    first = detail.group(1) if detail else (message.strip().splitlines() or [""])[0]
    return CheckpointError(
        f"Expected `{name}` to be a Lightning checkpoint, but {str(path)!r} cannot be read by torch.load "
        f"({type(err).__name__}: {first.strip()})."
    )


def checkpoint_task(checkpoint: Mapping[str, Any]) -> tuple[str | None, int | None]:
    """``(task, num_labels)`` recorded in a checkpoint of the classifier (``None`` where unknown)."""
    hparams = checkpoint.get("hyper_parameters") or {}
    task = hparams.get("task")
    num_labels = hparams.get("num_labels")
    config = checkpoint.get(MODEL_CONFIG_KEY) or {}
    if num_labels is None and config.get("id2label"):
        num_labels = len(config["id2label"])
    return task, (int(num_labels) if num_labels is not None else None)


def check_checkpoint_fits(
    checkpoint: Mapping[str, Any], path: str | Path, *, task: str | None, num_labels: int | None
) -> None:
    """Refuse a checkpoint of another task or label count, naming both sides.

    Called before anything is instantiated or written (``train.py validate --ckpt_path ...``), so
    a wrong checkpoint costs no run directory and no half-loaded model.

    Raises:
        CheckpointError: the checkpoint's ``num_labels`` or task differ from the current ones.
    """
    saved_task, saved_labels = checkpoint_task(checkpoint)
    if num_labels is not None and saved_labels is not None and saved_labels != num_labels:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} was trained for task={saved_task!r} with num_labels={saved_labels}, but "
            f"this run has task={task!r} with num_labels={num_labels}: pass a checkpoint of the same task."
        )
    if task is not None and saved_task is not None and saved_task != task:
        raise CheckpointError(
            f"Checkpoint {str(path)!r} was trained for task={saved_task!r}, but this run has task={task!r} "
            f"(both with num_labels={num_labels}): pass a checkpoint of the same task."
        )
