"""Memory planning for attribution passes: how many rows fit in one forward/backward.

An integration pass of :meth:`~lightning_attattr.core.attribution.AttentionIntegratedGradients.attribute`
runs ``rows = examples x integration steps`` copies of a length group through the attributed layer
and every layer above it, and keeps their activations for the backward pass. Its memory grows
linearly with the rows, so the number of rows per pass is planned from what the model's device has
free:

    rows = (budget - examples * state_bytes) // row_bytes

- ``budget`` (:func:`budget_bytes`): ``DEFAULT_MEMORY_SHARE`` (half) of the free memory, or what
  the caller's ``memory_budget`` allows;
- ``row_bytes`` (:func:`row_bytes`): what one row keeps alive from the attributed layer upwards,
  ``itemsize * tokens * layers_above * (4 * hidden + 2 * intermediate + heads * tokens)`` plus the
  replaced attention maps and their gradient;
- ``state_bytes`` (:func:`state_bytes`): what one example of the group holds for the whole group
  (captured attention maps, the outputs of the layers below each attributed layer, accumulators).

The constants are deliberately generous. Counting the tensors autograd saves for one row of a
BERT-base shape (12 layers, hidden 768, 128 tokens, fp32, attributed layer 0) gives 44 MiB, and the
peaks measured on an H200 (31.2 / 61.0 GiB for 64 examples x 10 / 20 steps in one pass) imply
48-50 MiB per row; :func:`row_bytes` says 64 MiB. The estimate therefore overshoots by about 1.3x, which with the
default share keeps a pass near a third of the free memory. On the CPU (a BERT of 4 layers x 4
heads x 256, 128 tokens) the peak resident set grew by 6.5 MiB per row at layer 0 and 1.2 MiB at
layer 3, against estimates of 7.5 and 2.3 MiB. The estimate also counts one
``heads x tokens x tokens`` map per layer above, which the fused attention kernel does not keep
but an eager fallback would. An estimate that is still too small is caught at run time: an
out-of-memory error halves the pass and retries (see ``attribute``).

This module imports only the standard library and ``torch``; everything here is pure except
:func:`free_memory`, which reads the device (or the operating system for CPU memory).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import torch

from lightning_attattr.core.checks import ArgumentError, ArgumentTypeError, UnsupportedModelError

#: Share of the free memory a planned attribution may use when ``memory_budget`` is not given: the
#: rest is left to the caller (an optimizer state during training, other processes, fragmentation).
DEFAULT_MEMORY_SHARE = 0.5
#: Planned passes on a GPU take at most this many rows: more rows use more memory without more speed
#: (BERT-base shape, 128 tokens, on one H200: 256 rows per pass ran as fast as 640 at 44 % of the peak
#: memory). On the CPU the plan alone decides.
GPU_MAX_ROWS = 256
#: Free memory assumed when neither the device nor the operating system can tell (a CPU without
#: ``/proc/meminfo`` or ``sysconf``): small enough to be safe on a laptop.
FALLBACK_FREE_BYTES = 4 * 2**30
#: Activations kept per layer above the attributed one, per token, in units of ``hidden_size``
#: (query/key/value and their input, attention output, the two residual sums before LayerNorm).
HIDDEN_ACTIVATIONS = 4
#: ... and in units of ``intermediate_size`` (the feed-forward input and output of the activation).
INTERMEDIATE_ACTIVATIONS = 2
#: ... and in units of ``heads x tokens`` (one attention map per layer).
ATTENTION_MAPS = 1

#: torch's out-of-memory error: ``torch.OutOfMemoryError`` (PyTorch >= 2.5), an alias of ``torch.cuda.OutOfMemoryError``
OutOfMemoryError: type[RuntimeError] = getattr(torch, "OutOfMemoryError", None) or torch.cuda.OutOfMemoryError
_OUT_OF_MEMORY = re.compile(r"out of memory|(can't|cannot|could not|unable to|failed to) allocate", re.IGNORECASE)
_CGROUP = Path("/sys/fs/cgroup")


# ----------------------------------------------------------------------------- the device
def free_memory(device: torch.device | str) -> int:
    """Bytes the device can still hand out to this process.

    - ``cuda`` (and other accelerators with ``torch.<type>.mem_get_info``, e.g. ``xpu``): the
      driver's free memory plus what PyTorch's caching allocator holds but does not use (it is
      reused before the driver is asked for more);
    - ``mps``: ``torch.mps.recommended_max_memory() - torch.mps.driver_allocated_memory()`` when
      this PyTorch has them, else as CPU;
    - ``cpu`` (and anything else): the available RAM, ``MemAvailable`` of ``/proc/meminfo`` or
      ``sysconf`` (available pages x page size), capped by the control group's limit
      (``memory.max - memory.current``, as in a container); ``FALLBACK_FREE_BYTES`` when none
      can be read.

    Args:
        device: the model's device.

    Returns:
        Free bytes, at least 0.
    """
    device = torch.device(device)
    if device.type == "mps":
        mps = torch.mps
        if hasattr(mps, "recommended_max_memory") and hasattr(mps, "driver_allocated_memory"):
            return max(0, int(mps.recommended_max_memory()) - int(mps.driver_allocated_memory()))
        return _free_ram()
    backend = getattr(torch, device.type, None)
    if device.type != "cpu" and backend is not None and hasattr(backend, "mem_get_info"):
        free, _total = backend.mem_get_info(device)
        cached = 0
        if hasattr(backend, "memory_reserved") and hasattr(backend, "memory_allocated"):
            cached = int(backend.memory_reserved(device)) - int(backend.memory_allocated(device))
        return max(0, int(free) + max(0, cached))
    return _free_ram()


def _free_ram() -> int:
    available = _meminfo_available()
    if available is None:
        available = _sysconf_available()
    limit = _cgroup_available()
    if available is None:
        return limit if limit is not None else FALLBACK_FREE_BYTES
    return available if limit is None else min(available, limit)


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        return None
    return None


def _sysconf_available() -> int | None:
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def _cgroup_available() -> int | None:
    """``memory.max - memory.current`` of this process's cgroup (v2), or None without a limit."""
    try:
        limit = (_CGROUP / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((_CGROUP / "memory.current").read_text().strip()))
    except (OSError, ValueError):
        return None


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says an allocation failed.

    That is ``torch.OutOfMemoryError`` (CUDA), or a ``RuntimeError`` whose message says it is out
    of memory or could not allocate (CPU, MPS).

    Example:
        >>> is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8 bytes"))
        True
        >>> is_out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
        False
    """
    if isinstance(error, OutOfMemoryError):
        return True
    return isinstance(error, RuntimeError) and _OUT_OF_MEMORY.search(str(error)) is not None


# ----------------------------------------------------------------------------- the model's shape
def model_dims(config: Any) -> tuple[int, int, int]:
    """``(hidden, heads, intermediate)`` of a Hugging Face config, under the names the encoders use.

    BERT-style configs name them ``hidden_size`` / ``num_attention_heads`` / ``intermediate_size``,
    DistilBERT ``dim`` / ``n_heads`` / ``hidden_dim``; a missing intermediate size is taken as
    ``4 x hidden``.

    Raises:
        UnsupportedModelError: the config names no hidden size or no head count.

    Example:
        >>> from transformers import BertConfig, DistilBertConfig
        >>> model_dims(BertConfig()), model_dims(DistilBertConfig())
        ((768, 12, 3072), (768, 12, 3072))
    """
    hidden = _first_int(config, ("hidden_size", "dim", "d_model", "n_embd"))
    heads = _first_int(config, ("num_attention_heads", "n_heads", "n_head", "encoder_attention_heads"))
    if hidden is None or heads is None:
        raise UnsupportedModelError(
            f"Expected the model's config to name its hidden size and head count (e.g. `hidden_size` and "
            f"`num_attention_heads`), but {type(config).__name__} has hidden={hidden}, heads={heads}."
        )
    intermediate = _first_int(config, ("intermediate_size", "hidden_dim", "ffn_dim", "n_inner"))
    return hidden, heads, intermediate if intermediate is not None else 4 * hidden


def _first_int(config: Any, names: tuple[str, ...]) -> int | None:
    for name in names:
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def row_bytes(config: Any, n_tokens: int, layers_above: int, dtype: torch.dtype) -> int:
    """Estimated bytes one row (one example at one integration step) needs in a pass.

    ``layers_above`` counts the attributed layer and every layer above it (``n_layers - layer``);
    the layers below run once per example and are not part of a row. Per layer and token a row
    keeps ``HIDDEN_ACTIVATIONS x hidden + INTERMEDIATE_ACTIVATIONS x intermediate +
    ATTENTION_MAPS x heads x tokens`` values for the backward pass; the replaced attention maps of
    the attributed layer and their gradient add ``2 x heads x tokens^2``.

    Args:
        config: the model's config (see :func:`model_dims`).
        n_tokens: sequence length of the pass (the longest real length of its length group).
        layers_above: layers that run per row, the attributed one included (at least 1).
        dtype: the compute dtype (the model's, or the autocast dtype).

    Returns:
        Bytes per row, at least 1.

    Example:
        >>> from transformers import BertConfig
        >>> round(row_bytes(BertConfig(), 128, 12, torch.float32) / 2**20, 1)  # BERT-base, layer 0: MiB
        64.5
    """
    hidden, heads, intermediate = model_dims(config)
    itemsize = torch.empty((), dtype=dtype).element_size()
    per_token = (
        HIDDEN_ACTIVATIONS * hidden + INTERMEDIATE_ACTIVATIONS * intermediate + ATTENTION_MAPS * heads * n_tokens
    )
    values = n_tokens * max(1, layers_above) * per_token + 2 * heads * n_tokens**2
    return max(1, values * itemsize)


def state_bytes(config: Any, n_tokens: int, n_attributed: int, accumulators: int, dtype: torch.dtype) -> int:
    """Estimated bytes one example of a length group holds while its group is integrated.

    Per attributed layer: the captured attention maps (``heads x tokens^2``) and the recorded
    output of the layer below (``tokens x hidden``); per (group, layer) pair: ``accumulators``
    gradient sums (1 for a fixed rule, one per refinement level for ``n_steps="auto"``) and the
    attribution itself. Maps and sums are kept in at least float32.

    Args:
        config: the model's config (see :func:`model_dims`).
        n_tokens: sequence length of the group.
        n_attributed: number of attributed layers.
        accumulators: gradient sums per pair.
        dtype: the compute dtype.

    Returns:
        Bytes per example.
    """
    hidden, heads, _ = model_dims(config)
    itemsize = torch.empty((), dtype=torch.promote_types(dtype, torch.float32)).element_size()
    maps = heads * n_tokens**2
    return (n_attributed * (maps + n_tokens * hidden) + (accumulators + 1) * maps) * itemsize


# ----------------------------------------------------------------------------- the plan
def check_memory_budget(memory_budget: object) -> int | float | None:
    """Return ``memory_budget`` if valid: ``None``, bytes (an int >= 1) or a fraction of the free memory in (0, 1].

    Raises:
        ArgumentTypeError: not a number (``bool`` is refused).
        ArgumentError: an int below 1, or a float outside (0, 1] (bytes are given as an int).

    Example:
        >>> check_memory_budget(0.25), check_memory_budget(12 * 2**30)
        (0.25, 12884901888)
        >>> check_memory_budget(1.5)
        Traceback (most recent call last):
        ...
        lightning_attattr.core.checks.ArgumentError: Expected `memory_budget` to be None, a number of bytes (an int >= 1) or a fraction of the free memory in (0, 1], but got 1.5.
    """  # noqa: E501
    allowed = "None, a number of bytes (an int >= 1) or a fraction of the free memory in (0, 1]"
    if memory_budget is None:
        return None
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, (int, float)):
        raise ArgumentTypeError(f"Expected `memory_budget` to be {allowed}, but got {memory_budget!r}.")
    if isinstance(memory_budget, int):
        if memory_budget < 1:
            raise ArgumentError(f"Expected `memory_budget` to be {allowed}, but got {memory_budget}.")
        return memory_budget
    if not (math.isfinite(memory_budget) and 0.0 < memory_budget <= 1.0):
        raise ArgumentError(f"Expected `memory_budget` to be {allowed}, but got {memory_budget!r}.")
    return float(memory_budget)


def budget_bytes(free: int, memory_budget: int | float | None = None) -> int:
    """The bytes a planned attribution may use.

    Args:
        free: free bytes on the device (:func:`free_memory`).
        memory_budget: ``None``: ``DEFAULT_MEMORY_SHARE`` of ``free``; a float in (0, 1]: that
            fraction of ``free``; an int: that many bytes, but never more than ``free``.

    Example:
        >>> budget_bytes(1000), budget_bytes(1000, 0.25), budget_bytes(1000, 300), budget_bytes(1000, 5000)
        (500, 250, 300, 1000)
    """
    if memory_budget is None:
        return int(free * DEFAULT_MEMORY_SHARE)
    if isinstance(memory_budget, float):
        return int(free * memory_budget)
    return min(int(memory_budget), int(free))


def plan_examples(budget: int, row: int, state: int = 0) -> int:
    """The most examples one length group may hold: each needs its ``state`` and at least one row.

    Example:
        >>> plan_examples(budget=1000, row=90, state=10), plan_examples(budget=50, row=90, state=10)
        (10, 1)
    """
    return max(1, budget // (row + state))


def plan_rows(budget: int, row: int, examples: int = 0, state: int = 0) -> int:
    """The most rows (examples x integration steps) one pass may take: ``(budget - examples * state) // row``.

    Args:
        budget: bytes the attribution may use (:func:`budget_bytes`).
        row: bytes per row (:func:`row_bytes`).
        examples: examples of the length group, whose ``state`` stays allocated during the pass.
        state: bytes per example (:func:`state_bytes`).

    Returns:
        At least 1: a pass of one row is always attempted (an out-of-memory error then says so).

    Example:
        >>> plan_rows(budget=1000, row=90, examples=3, state=10)
        10
    """
    return max(1, (budget - examples * state) // row)


def max_planned_rows(device: torch.device | str) -> int | None:
    """The ceiling on planned rows per pass on ``device``: :data:`GPU_MAX_ROWS` on CUDA, else ``None``.

    Example:
        >>> max_planned_rows("cpu") is None, max_planned_rows("cuda:0")
        (True, 256)
    """
    return GPU_MAX_ROWS if torch.device(device).type == "cuda" else None
