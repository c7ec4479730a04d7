"""Every public path follows the device of the model and of its inputs (the GPU issue's checks).

Three kinds of check:

- **meta inputs (CPU, always).** The pure tensor functions get their inputs on the ``meta`` device and
  must return ``meta`` tensors, under :class:`SameDevice`, a function mode that fails any call mixing
  tensors of two devices (0-dim CPU tensors, which CUDA accepts as scalars, excepted). A tensor built
  without ``device=`` (``torch.zeros(n)``), or indices left on the CPU, raise there just as they do
  with a CUDA model. Functions whose result depends on the data (``nonzero``, ``.tolist()``,
  ``float(...)``, a NaN check) cannot run on ``meta``: their cases run on CUDA only (``DATA_DEPENDENT``).
- **the default-device trap (CPU, always).** The model-running paths run on real CPU data inside
  ``torch.device("meta")`` (and :class:`SameDevice`): every tensor created without an explicit device
  lands on ``meta`` and collides with the CPU data, or shows up in the result. The results must be
  bit-identical to a plain run. ``attribute()`` enters the trap too (fixed rule, ``n_steps="auto"``,
  reduced precision): ``core/attribution.py`` builds its CPU bookkeeping (step indices, result records)
  with an explicit ``device="cpu"``.
- **CUDA (only where ``torch.cuda.is_available()``).** The same pure cases with CUDA inputs, the model
  paths with a CUDA model (in float64, so that the comparison can be tight), the reference, the
  benchmark's naive baseline, the head-importance methods, and ``analyze.py attribute`` /
  ``faithfulness`` in-process with ``--trainer.accelerator gpu``, all against the CPU results.
  ``ATTATTR_TEST_DEVICE=cpu`` runs them CPU against CPU: a check of the tests themselves without a GPU.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import json
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from lightning_attattr.analysis.edges import (
    EDGE_FUNCTIONS,
    attattr_edges,
    attention_edges,
    grad_attention_edges,
    real_positions,
    rollout_edges,
    rollout_scores,
)
from lightning_attattr.analysis.effectiveness import effectiveness_masks, per_layer_masks
from lightning_attattr.analysis.faithfulness import (
    layer_matched_random,
    pair_edges,
    pair_scores,
    planted_hits,
    random_edges,
    random_pairs,
    removal_masks,
    removal_probabilities,
    token_pair_edges,
    top_edges,
    top_pairs,
    word_edge_mask,
    word_layout,
    word_maps,
)
from lightning_attattr.analysis.heads import importance_from_records, matthews, pruning_plan, task_metrics
from lightning_attattr.analysis.trees import merge_units
from lightning_attattr.analysis.universality import pearson, spearman
from lightning_attattr.core.adapter import attattr_attention, attention_scope
from lightning_attattr.core.attribution import AttentionIntegratedGradients, AttributionResult, completeness_scale
from lightning_attattr.core.importance import (
    accuracy_difference_importance,
    attention_weight_importance,
    attribution_head_scores,
    head_importance,
    normalize_per_layer,
    prune_mask,
    random_importance,
    taylor_importance,
)
from lightning_attattr.core.pruning import prune_heads
from lightning_attattr.core.reference import reference_attattr
from lightning_attattr.metrics import HeadImportance
from tests.conftest import TEST_DEVICE, make_model, text_batch

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
LENGTHS = (7, 4, 6)
#: The device the accelerator tests compare with the CPU (``ATTATTR_TEST_DEVICE=cpu``: the tests' own check).
DEVICE = TEST_DEVICE
ACCELERATOR = {"cuda": "gpu"}.get(DEVICE, DEVICE)  # the Lightning name, for `--trainer.accelerator`
needs_cuda = pytest.mark.cuda  # skipped without a GPU (tests/conftest.py)


# ----------------------------------------------------------------------------- the two CPU mechanisms
def _devices(obj: Any, found: set[torch.device]) -> set[torch.device]:
    """The devices of the tensors in ``obj`` (nested lists, tuples, dicts); 0-dim CPU tensors are scalars."""
    if isinstance(obj, torch.Tensor):
        if not (obj.dim() == 0 and obj.device.type == "cpu"):
            found.add(obj.device)
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            _devices(item, found)
    elif isinstance(obj, dict):
        for item in obj.values():
            _devices(item, found)
    return found


class SameDevice(TorchFunctionMode):
    """Fail every torch call whose tensor arguments live on two devices (moves and copies excepted).

    Stricter than CUDA, which lets a CUDA tensor be indexed by CPU indices: the house rule moves
    indices to the indexed tensor's device.
    """

    MOVES = frozenset({torch.Tensor.to, torch.Tensor.cpu, torch.Tensor.cuda, torch.Tensor.copy_})

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func not in self.MOVES:
            devices = _devices(kwargs, _devices(args, set()))
            if len(devices) > 1:
                name = getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
                raise AssertionError(f"{name} mixes tensors on {sorted(str(d) for d in devices)}")
        return func(*args, **kwargs)


@contextlib.contextmanager
def device_trap() -> Iterator[None]:
    """Tensors created without ``device=`` land on ``meta``; calls mixing devices fail."""
    with torch.device("meta"), SameDevice():
        yield


def tensors_of(obj: Any) -> list[torch.Tensor]:
    """Every tensor in a result (nested lists, tuples, dicts, dataclasses)."""
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in tensors_of(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in tensors_of(v)]
    if hasattr(obj, "__dataclass_fields__"):
        return [t for name in obj.__dataclass_fields__ for t in tensors_of(getattr(obj, name))]
    return []


def assert_on(obj: Any, device: str) -> None:
    found = {t.device.type for t in tensors_of(obj)}
    assert found <= {device}, f"expected every tensor on {device}, got {sorted(found)}"


def assert_same(got: Any, expected: Any, exact: bool = True, **tolerance: float) -> None:
    """``got`` (moved to the CPU) equals ``expected``: bit for bit, or within ``tolerance``."""
    if isinstance(expected, torch.Tensor):
        assert isinstance(got, torch.Tensor)
        got = got.cpu()
        if exact:
            assert got.dtype == expected.dtype and torch.equal(got, expected)
        else:
            torch.testing.assert_close(got, expected, **tolerance)
    elif isinstance(expected, dict):
        assert isinstance(got, dict) and list(got) == list(expected)
        for key in expected:
            assert_same(got[key], expected[key], exact, **tolerance)
    elif isinstance(expected, (list, tuple)) and not isinstance(expected, str):
        assert isinstance(got, (list, tuple)) and len(got) == len(expected)
        for g, e in zip(got, expected):
            assert_same(g, e, exact, **tolerance)
    elif hasattr(expected, "__dataclass_fields__"):
        for name in expected.__dataclass_fields__:
            assert_same(getattr(got, name), getattr(expected, name), exact, **tolerance)
    elif isinstance(expected, float) and not exact:
        assert got == pytest.approx(expected, rel=tolerance.get("rtol", 1e-6), abs=tolerance.get("atol", 1e-9))
    else:
        assert got == expected


# ----------------------------------------------------------------------------- the pure cases
LAYOUT = word_layout(["[CLS]", "un", "##real", "film", "is", "[SEP]"], ["[CLS]", "[SEP]"])  # 6 tokens, 5 units


def _rand(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(7)


def _probs(layers: int = 3, n: int = 6) -> torch.Tensor:
    return _rand(layers, n, n, dtype=torch.float64).softmax(-1)  # [layer, q, k], rows sum to 1


def _edge_sets() -> list[torch.Tensor]:
    return [torch.tensor([[0, 1, 2], [2, 0, 0]]), torch.zeros(0, 3, dtype=torch.long), torch.tensor([[1, 3, 3]])]


EDGE_SETS = _edge_sets()  # built here, outside any trap: the data of the model paths


def _records(d: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    records = {key: torch.rand(5, 2, 3, generator=g) for key in ("attattr_max", "attattr_mean", "attattr_sum")}
    records["taylor"] = torch.rand(5, 2, 3, generator=g, dtype=torch.float64)
    records["taylor_michel"] = torch.rand(5, 2, 3, generator=g, dtype=torch.float64)
    records["attention"] = torch.rand(5, 2, 3, generator=g)
    records["correct"] = torch.rand(5, generator=g) > 0.3
    records["correct_masked"] = torch.rand(5, 6, generator=g) > 0.5
    return {k: v.to(d) for k, v in records.items()}


def _result(d: str) -> AttributionResult:
    maps = [_rand(2, 3, n, n, seed=n).to(d) for n in (4, 2)]
    prob, baseline = torch.tensor([0.9, 0.6], device=d), torch.tensor([[0.5, 0.7], [0.6, 0.2]], device=d)
    return AttributionResult(maps, (0, 1), torch.tensor([1, 0], device=d), prob, baseline, baseline * 0.1, "x", 4)


class _Attention(nn.Module):
    """What transformers passes as ``module`` to an attention function (eval mode: no dropout)."""


def _attention(d: str, mask: str) -> Any:
    q, k, v = (_rand(2, 3, 5, 4, seed=s).to(d) for s in (1, 2, 3))  # [batch, head, pos, head_dim]
    real = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])[:, None, None, :].to(d)  # [batch, 1, 1, key]
    attention_mask = {"none": None, "bool": real, "float": (~real).float() * -1e4}[mask]
    return attattr_attention(_Attention().eval(), q, k, v, attention_mask)


@dataclass(frozen=True)
class Case:
    """A public pure function applied to inputs on device ``d``; ``on_cpu``: it returns a CPU record."""

    fn: Callable[[str], Any]
    on_cpu: bool = False


CASES: dict[str, Case] = {
    # analysis/edges.py
    "real_positions_without_mask": Case(
        lambda d: real_positions({"input_ids": torch.ones(2, 5, dtype=torch.long).to(d)})
    ),
    "rollout_scores": Case(lambda d: rollout_scores(_probs().to(d))),
    # analysis/faithfulness.py
    "top_edges": Case(lambda d: top_edges(_rand(3, 6, 6).to(d), 5)),
    "top_pairs": Case(lambda d: top_pairs(_rand(5, 5).to(d), 4)),
    "removal_masks_from_edges": Case(lambda d: removal_masks([e.to(d) for e in _edge_sets()], 3, 4)),
    "removal_masks_to_device": Case(lambda d: removal_masks(_edge_sets(), 3, 4, device=d)),
    "random_edges": Case(lambda d: random_edges((3, 6, 6), 7, _gen(), device=d)),
    "random_pairs": Case(lambda d: random_pairs(5, 4, _gen(), device=d)),
    "token_pair_edges": Case(lambda d: token_pair_edges([(1, 3), (2, 4)], 3, device=d)),
    "word_edge_mask": Case(lambda d: word_edge_mask(LAYOUT, device=d)),
    "word_maps": Case(lambda d: word_maps(_rand(3, 6, 6).to(d), LAYOUT)),
    "pair_scores": Case(lambda d: pair_scores(_rand(3, 6, 6).to(d), LAYOUT)),
    "planted_hits": Case(lambda d: planted_hits(_rand(3, 6, 6).to(d), [(1, 3), (4, 2)], ks=(1, 3))),
    # analysis/effectiveness.py, analysis/heads.py, analysis/trees.py
    "per_layer_masks": Case(lambda d: per_layer_masks(_rand(2, 4).to(d), largest=False)),
    "effectiveness_masks": Case(lambda d: effectiveness_masks(_rand(2, 4, seed=1).to(d), _rand(2, 4, seed=2).to(d))),
    "importance_from_records": Case(
        lambda d: importance_from_records(
            _records(d),
            ["attattr", "attattr_mean", "attattr_sum", "taylor_michel", "attention", "accuracy_difference", "random"],
            2,
            3,
        )
    ),
    "merge_units": Case(lambda d: merge_units(_rand(2, 3, 6, 6).to(d), LAYOUT.tokens, LAYOUT.units)),
    # core: importance, adapter's attention function, the result's helpers
    "attribution_head_scores": Case(
        lambda d: [
            attribution_head_scores([m.to(d) for m in _result("cpu").attributions], p) for p in ("max", "mean", "sum")
        ]
    ),
    "attribution_head_scores_of_result": Case(lambda d: attribution_head_scores(_result(d))),
    "head_importance": Case(lambda d: head_importance(_rand(4, 2, 3).to(d))),
    "attattr_attention_no_mask": Case(lambda d: _attention(d, "none")),
    "attattr_attention_bool_mask": Case(lambda d: _attention(d, "bool")),
    "attattr_attention_float_mask": Case(lambda d: _attention(d, "float")),
    "result_padded": Case(lambda d: _result(d).padded()),
    "result_relative_convergence_delta": Case(lambda d: _result(d).relative_convergence_delta()),
    "completeness_scale": Case(lambda d: completeness_scale(_rand(4).to(d)[:, None], _rand(4, 2, seed=1).to(d))),
}

#: Cases whose result depends on the data (``nonzero``, ``.tolist()``, ``float()``, NaN checks): CUDA only.
DATA_DEPENDENT: dict[str, Case] = {
    "real_positions_with_mask": Case(
        lambda d: real_positions({k: v.to(d) for k, v in text_batch(LENGTHS, seq_len=8).items()})
    ),
    "layer_matched_random": Case(
        lambda d: layer_matched_random(torch.tensor([[0, 1, 2], [2, 0, 0], [2, 1, 1]]).to(d), (3, 4, 4), _gen())
    ),
    "planted_hits_eligible": Case(
        lambda d: planted_hits(_rand(3, 5, 5).to(d), [(1, 3)], eligible=word_edge_mask(LAYOUT))
    ),
    "pair_edges": Case(lambda d: pair_edges(torch.tensor([[1, 2], [3, 1]]).to(d), LAYOUT, 3)),
    "importance_taylor": Case(lambda d: importance_from_records(_records(d), ["taylor"], 2, 3)),
    "pruning_plan": Case(
        lambda d: pruning_plan(importance_from_records(_records(d), ["attattr", "random"], 2, 3), [0, 0.5, 1]),
        on_cpu=True,
    ),
    "prune_mask": Case(lambda d: prune_mask(_rand(2, 3).to(d), 0.5)),
    "normalize_per_layer": Case(lambda d: normalize_per_layer(_rand(2, 3).to(d))),
    "matthews": Case(lambda d: matthews(torch.tensor([0, 1, 2, 1, 0]).to(d), torch.tensor([0, 2, 2, 1, 1]).to(d), 3)),
    "task_metrics": Case(
        lambda d: task_metrics(torch.tensor([0, 1, 1, 0]).to(d), torch.tensor([0, 1, 0, 0]).to(d), ["f1", "mcc"], 2)
    ),
    "pearson": Case(lambda d: pearson(_rand(2, 3).to(d), _rand(2, 3, seed=1).to(d))),
    "spearman": Case(lambda d: spearman(torch.tensor([[1.0, 2.0, 2.0], [0.5, 3.0, 1.0]]).to(d), _rand(2, 3).to(d))),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_pure_function_follows_meta_inputs(name):
    case = CASES[name]
    with SameDevice():
        out = case.fn("meta")
    assert tensors_of(out), "the case returns no tensor"
    assert_on(out, "cpu" if case.on_cpu else "meta")


@pytest.mark.parametrize("name", sorted(CASES))
def test_pure_function_on_cpu_is_unchanged_by_the_checks(name):
    """The cases themselves are sound: under the checks the CPU result is the plain one, bit for bit."""
    expected = CASES[name].fn("cpu")
    with SameDevice():
        assert_same(CASES[name].fn("cpu"), expected)


def test_meta_catches_what_the_issue_measured():
    """The checks fail on the bug patterns of the issue: a CPU tensor built beside the data, CPU indices."""
    probs = torch.ones(2, 3, 3, device="meta")
    with pytest.raises((AssertionError, RuntimeError)), SameDevice():
        torch.zeros(3) + probs[0, 0]  # torch.zeros(n) without device=
    with pytest.raises(AssertionError, match="mixes tensors"), SameDevice():
        probs[0].index_select(1, torch.tensor([0, 2]))  # indices left on the CPU
    with pytest.raises((AssertionError, RuntimeError)), device_trap():
        flow = torch.zeros(3)  # the trap puts it on meta ...
        flow @ torch.ones(3, 3, device="cpu")  # ... where it meets the CPU data


# ----------------------------------------------------------------------------- model paths under the trap
@pytest.fixture(scope="module")
def model():
    return make_model("bert", num_labels=3)


@pytest.fixture(scope="module")
def batch():
    return text_batch(LENGTHS)


def _one(batch: dict[str, torch.Tensor], row: int) -> dict[str, torch.Tensor]:
    n = LENGTHS[row]
    return {k: v[row : row + 1, :n] for k, v in batch.items()}


@functools.cache
def _load_benchmark() -> Any:
    spec = importlib.util.spec_from_file_location("_attribution_speed", ROOT / "benchmarks" / "attribution_speed.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pruned(model: nn.Module) -> nn.Module:
    pruned = copy.deepcopy(model)
    prune_heads(pruned, {0: [1], 2: [0, 3]})
    return pruned


def _captured(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    with torch.no_grad(), attention_scope(model) as ctrl, ctrl.capturing() as store:
        model(**batch)
    return dict(store)


GOLD = torch.tensor([0, 2, 1])  # gold labels of the batch, built outside any trap


def _accuracy_difference(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The accuracy-difference baseline: its CPU masks applied by a scope on the model, wherever it is."""

    def evaluate(mask: torch.Tensor | None) -> float:
        with torch.no_grad(), attention_scope(model) as ctrl, ctrl.masked(mask):
            pred = model(**batch).logits.argmax(-1).cpu()
        return float((pred == GOLD).double().mean())

    return accuracy_difference_importance(evaluate, n_layers=3, n_heads=4)


def _targets(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits.argmax(-1)


def _attribute(**kwargs: Any) -> Callable[[nn.Module, dict[str, torch.Tensor]], Any]:
    """``AttentionIntegratedGradients(model).attribute(batch, **kwargs)`` with the convergence records."""
    return lambda m, b: AttentionIntegratedGradients(m).attribute(b, return_convergence_delta=True, **kwargs)


#: The model-running public paths, ``fn(model, batch)``.
MODEL_PATHS: dict[str, Callable[[nn.Module, dict[str, torch.Tensor]], Any]] = {
    "attattr_edges": lambda m, b: attattr_edges(m, b, n_steps=4),
    "attribute_fixed": _attribute(n_steps=4),
    "attribute_fixed_target_list": _attribute(n_steps=3, target=[2, 0, 1]),
    "attribute_auto": _attribute(n_steps="auto"),
    "attribute_fixed_bf16": _attribute(n_steps=4, precision="bf16"),
    "attribute_fixed_auto_precision": _attribute(n_steps=4, precision="auto"),
    "attribute_auto_bf16": _attribute(n_steps="auto", precision="bf16"),
    "attribute_auto_auto_precision": _attribute(n_steps="auto", precision="auto"),
    "attention_edges": attention_edges,
    "rollout_edges": rollout_edges,
    "grad_attention_edges": grad_attention_edges,
    "grad_attention_edges_target": lambda m, b: grad_attention_edges(m, b, target=[2, 0, 1]),
    "taylor_official": lambda m, b: taylor_importance(m, b),
    "taylor_michel": lambda m, b: taylor_importance(m, b, variant="michel", labels=[0, 2, 1]),
    "attention_weight_importance": attention_weight_importance,
    "accuracy_difference_importance": _accuracy_difference,
    "random_importance": lambda m, b: random_importance(3, 4, seed=5),
    "removal_probabilities": lambda m, b: removal_probabilities(m, _one(b, 0), EDGE_SETS),
    "reference_attattr": lambda m, b: reference_attattr(
        m, b, _targets(m, b), method="riemann_left", n_steps=2, steps_per_pass=2
    ),
    "reference_attattr_padded": lambda m, b: reference_attattr(m, b, _targets(m, b), n_steps=2, pad_to=9),
    "benchmark_naive_attribute": lambda m, b: _load_benchmark().naive_attribute(
        m, [row[:n].tolist() for row, n in zip(b["input_ids"], LENGTHS)], m=2, pad_to=8
    ),
    "prune_heads_then_capture": lambda m, b: _captured(_pruned(m), b),
    "prune_heads_then_taylor": lambda m, b: taylor_importance(_pruned(m), b),
}


@pytest.mark.filterwarnings("ignore:.*did not reach completeness_tol")  # bf16 pairs that stall: flagged, expected
@pytest.mark.parametrize("name", sorted(MODEL_PATHS))
def test_model_path_creates_nothing_off_device(name, model, batch):
    """On CPU data inside the trap the result is the plain one, bit for bit, and on the CPU."""
    fn = MODEL_PATHS[name]
    expected = fn(model, batch)
    with device_trap():
        got = fn(model, batch)
    assert_on(got, "cpu")
    assert_same(got, expected)


def test_the_trap_catches_the_rollout_bug(model, batch):
    """The pre-fix rollout (zeros and eye built on the CPU beside the probabilities) fails inside the trap."""

    def old_rollout(a: torch.Tensor) -> torch.Tensor:
        flow = torch.zeros(a.shape[1], dtype=a.dtype)
        flow[0] = 1.0
        return flow @ (0.5 * a[0] + 0.5 * torch.eye(a.shape[1], dtype=a.dtype))

    with pytest.raises((AssertionError, RuntimeError)), device_trap():
        old_rollout(torch.rand(2, 4, 4, dtype=torch.float64, device="cpu"))


def test_every_edge_method_is_covered_by_the_trap():
    assert {fn.__name__ for fn in EDGE_FUNCTIONS.values()} <= set(MODEL_PATHS)


# ----------------------------------------------------------------------------- CUDA against the CPU
@needs_cuda
@pytest.mark.parametrize("name", sorted({**CASES, **DATA_DEPENDENT}))
def test_pure_function_on_cuda_matches_cpu(name):
    case = {**CASES, **DATA_DEPENDENT}[name]
    expected = case.fn("cpu")
    with SameDevice():
        got = case.fn(DEVICE)
    assert_on(got, "cpu" if case.on_cpu else DEVICE)
    assert_same(got, expected, exact=False)


@pytest.fixture(scope="module")
def model64():
    return make_model("bert", num_labels=3, dtype=torch.float64)


#: float64 on both devices: CUDA and CPU kernels then agree to ~1e-12, the outputs cast to float32 to ~1e-7
CUDA_TOLERANCE = {"rtol": 1e-5, "atol": 1e-7}


def _cuda_model_paths() -> dict[str, Callable[[nn.Module, dict[str, torch.Tensor]], Any]]:
    paths = dict(MODEL_PATHS)
    for name, fn in EDGE_FUNCTIONS.items():
        paths[f"edges_{name}"] = lambda m, b, fn=fn: fn(
            m, b, **({"n_steps": 8} if fn.__name__ == "attattr_edges" else {})
        )
    paths["attribute"] = lambda m, b: AttentionIntegratedGradients(m).attribute(
        b, n_steps=8, return_convergence_delta=True
    )
    paths["attribution_head_scores"] = lambda m, b: attribution_head_scores(
        AttentionIntegratedGradients(m).attribute(b, n_steps=8)
    )
    return paths


@needs_cuda
@pytest.mark.parametrize("name", sorted(_cuda_model_paths()))
def test_model_path_on_cuda_matches_cpu(name, model64, batch):
    fn = _cuda_model_paths()[name]
    expected = fn(model64, batch)
    cuda_model = copy.deepcopy(model64).to(DEVICE)
    cuda_batch = {k: v.to(DEVICE) for k, v in batch.items()}
    got = fn(cuda_model, cuda_batch)
    assert_same(got, expected, exact=False, **CUDA_TOLERANCE)
    if name in ("attribute", "attribution_head_scores", "benchmark_naive_attribute"):  # CPU inputs, a CUDA model
        assert_same(fn(cuda_model, batch), expected, exact=False, **CUDA_TOLERANCE)


@needs_cuda
def test_adaptive_attribute_on_cuda(model64, batch):
    """``n_steps="auto"`` (the default, :class:`_Refinement`) on CUDA: CPU records that meet the tolerance.

    Not compared with the CPU value by value: where an example stops refining depends on errors near the
    tolerance, which the two devices round differently.
    """
    result = AttentionIntegratedGradients(copy.deepcopy(model64).to(DEVICE)).attribute(
        {k: v.to(DEVICE) for k, v in batch.items()}, return_convergence_delta=True
    )
    assert_on(result, "cpu")
    assert float(result.require("completeness_error").max()) <= 1e-3
    expected = AttentionIntegratedGradients(model64).attribute(batch, return_convergence_delta=True)
    assert_same(result.target, expected.target)


@needs_cuda
def test_head_importance_metric_on_cuda():
    scores = _rand(5, 2, 3)
    expected = HeadImportance(2, 3)
    expected.update(scores)
    metric = HeadImportance(2, 3).to(DEVICE)
    metric.update(scores.to(DEVICE))
    metric.update(scores)  # CPU scores into device states
    expected.update(scores)
    assert_on(metric.compute(), DEVICE)
    assert_same(metric.compute(), expected.compute(), exact=False)


@needs_cuda
def test_prune_heads_on_cuda_keeps_the_model_on_cuda(model64, batch):
    cuda_model = _pruned(copy.deepcopy(model64).to(DEVICE))
    assert {p.device.type for p in cuda_model.parameters()} == {DEVICE}
    cpu_model = _pruned(model64)
    with torch.no_grad():
        expected = cpu_model(**batch).logits
        got = cuda_model(**{k: v.to(DEVICE) for k, v in batch.items()}).logits
    assert_same(got, expected, exact=False, **CUDA_TOLERANCE)


# ----------------------------------------------------------------------------- analyze.py in-process on the GPU
def _analyze(subcommand: str, out: Path, accelerator: str, extra: list[str]) -> None:
    from lightning_attattr.analysis_cli import cli_main

    cli_main(
        [
            subcommand,
            "--config",
            str(QUICKSTART),
            "--data.n_train=8",
            "--data.n_val=8",
            "--output_dir",
            str(out),
            "--n_steps",
            "4",
            "--trainer.accelerator",
            accelerator,
            "--trainer.devices",
            "1",
            "--trainer.enable_progress_bar=false",
            *extra,
        ]
    )


def _close(got: Any, expected: Any, atol: float) -> None:
    if isinstance(expected, dict):
        assert set(got) == set(expected)
        for key in expected:
            _close(got[key], expected[key], atol)
    elif isinstance(expected, list):
        assert len(got) == len(expected)
        for g, e in zip(got, expected):
            _close(g, e, atol)
    elif isinstance(expected, float):
        assert got == pytest.approx(expected, abs=atol)
    else:
        assert got == expected


@needs_cuda
def test_analyze_faithfulness_on_gpu_matches_cpu(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [sys.argv[0]])
    extra = ["--n_examples", "4", "--ks", "[1, 2]", "--n_random", "1"]
    _analyze("faithfulness", tmp_path / "cpu", "cpu", extra)
    _analyze("faithfulness", tmp_path / "gpu", ACCELERATOR, extra)
    cpu = json.loads((tmp_path / "cpu" / "faithfulness.json").read_text(encoding="utf-8"))
    gpu = json.loads((tmp_path / "gpu" / "faithfulness.json").read_text(encoding="utf-8"))
    # an untrained model: every drop is ~1e-4 and far from a flip, so rankings that differ in a near-tie
    # between the devices move the curves by much less than the tolerance
    for key in ("n_examples", "ks", "methods", "mean_predicted_prob", "curves"):
        _close(gpu[key], cpu[key], atol=1e-3)
    _close(gpu["cross_layer"]["curves"], cpu["cross_layer"]["curves"], atol=1e-3)
    assert gpu["completeness"]["n_maps"] == cpu["completeness"]["n_maps"]


@needs_cuda
def test_analyze_attribute_on_gpu_matches_cpu(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [sys.argv[0]])
    extra = ["--indices", "[0, 1, 2]", "--plots", "false"]
    _analyze("attribute", tmp_path / "cpu", "cpu", extra)
    _analyze("attribute", tmp_path / "gpu", ACCELERATOR, extra)
    index = json.loads((tmp_path / "cpu" / "attributions.json").read_text(encoding="utf-8"))["examples"]
    assert len(index) == 3
    for item in index:
        cpu = torch.load(tmp_path / "cpu" / item["file"], weights_only=True)
        gpu = torch.load(tmp_path / "gpu" / item["file"], weights_only=True)
        assert gpu["tokens"] == cpu["tokens"] and gpu["target"] == cpu["target"]
        for key in ("attributions", "attention"):
            assert gpu[key].device.type == "cpu" and gpu[key].shape == cpu[key].shape
            # float32 on two devices: within 1e-3 of the map's largest entry
            assert float((gpu[key] - cpu[key]).abs().max()) <= 1e-3 * float(cpu[key].abs().max()) + 1e-9
        assert gpu["probs"] == pytest.approx(cpu["probs"], abs=1e-5)
