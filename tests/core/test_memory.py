"""Memory planning: the pure estimates of `core.memory`, the planned default of `internal_batch_size`, the
`memory_budget` option, and halving a pass that runs out of memory (results never change)."""

import warnings

import pytest
import torch
import transformers

from lightning_attattr.core import memory
from lightning_attattr.core.attribution import AttributionResult, attribute, merge_shards
from lightning_attattr.core.checks import UserError
from tests.conftest import make_model, text_batch
from tests.core.test_adapter import _no_hooks

GiB = 2**30
CPU_ALLOC_ERROR = "DefaultCPUAllocator: can't allocate memory: you tried to allocate 123456 bytes. Error code 12"


def _assert_same(a, b, rtol=1e-6):
    for x, y in zip(a.attributions, b.attributions):
        assert x.shape == y.shape
        assert (x - y).abs().max() <= rtol * y.abs().max()


def _assert_equal(a, b):
    assert all(torch.equal(x, y) for x, y in zip(a.attributions, b.attributions))


def _simulate_free(monkeypatch, free: int) -> list:
    """`free_memory` reports `free` bytes; the returned list records the devices asked about."""
    calls = []

    def fake(device):
        calls.append(torch.device(device))
        return free

    monkeypatch.setattr(memory, "free_memory", fake)
    return calls


def _bytes(model, n_tokens, layer, n_attributed=1, accumulators=1):
    config, n_layers = model.config, model.config.num_hidden_layers
    row = memory.row_bytes(config, n_tokens, n_layers - layer, torch.float32)
    state = memory.state_bytes(config, n_tokens, n_attributed, accumulators, torch.float32)
    return row, state


# ------------------------------------------------------------------------------ pure estimates
def test_row_bytes_follows_the_documented_formula():
    config = transformers.BertConfig()  # BERT-base: hidden 768, 12 heads, intermediate 3072
    per_token = 4 * 768 + 2 * 3072 + 12 * 128
    expected = (128 * 12 * per_token + 2 * 12 * 128**2) * 4
    assert memory.row_bytes(config, 128, 12, torch.float32) == expected
    assert memory.row_bytes(config, 128, 12, torch.bfloat16) == expected // 2
    assert memory.row_bytes(config, 128, 1, torch.float32) < memory.row_bytes(config, 128, 2, torch.float32)
    # the estimate stays above what an H200 measured (48-50 MiB per row at this shape), by less than 1.5x
    assert 50 * 2**20 < expected < 1.5 * 50 * 2**20


def test_state_bytes_counts_maps_and_layer_outputs_in_at_least_float32():
    config = transformers.BertConfig(hidden_size=32, num_attention_heads=4, intermediate_size=37)
    maps, outputs = 4 * 10**2, 10 * 32
    assert memory.state_bytes(config, 10, 3, 1, torch.float32) == (3 * (maps + outputs) + 2 * maps) * 4
    assert memory.state_bytes(config, 10, 3, 1, torch.bfloat16) == memory.state_bytes(config, 10, 3, 1, torch.float32)
    assert memory.state_bytes(config, 10, 3, 5, torch.float64) == (3 * (maps + outputs) + 6 * maps) * 8


def test_model_dims_reads_every_supported_config_family():
    assert memory.model_dims(transformers.BertConfig(hidden_size=32, num_attention_heads=4, intermediate_size=37)) == (
        32,
        4,
        37,
    )
    assert memory.model_dims(transformers.DistilBertConfig(dim=32, n_heads=4, hidden_dim=37)) == (32, 4, 37)
    vit = transformers.ViTConfig(hidden_size=32, num_attention_heads=4, intermediate_size=37)
    assert memory.model_dims(vit) == (32, 4, 37)
    with pytest.raises(ValueError, match="hidden size and head count"):
        memory.model_dims(object())


def test_plan_rows_and_examples():
    assert memory.plan_rows(budget=1000, row=90, examples=3, state=10) == 10
    assert memory.plan_rows(budget=1000, row=90) == 11
    assert memory.plan_rows(budget=10, row=90, examples=3, state=10) == 1  # one row is always attempted
    assert memory.plan_examples(budget=1000, row=90, state=10) == 10
    assert memory.plan_examples(budget=10, row=90, state=10) == 1


def test_budget_is_a_share_a_fraction_or_capped_bytes():
    assert memory.budget_bytes(8 * GiB) == int(8 * GiB * memory.DEFAULT_MEMORY_SHARE) == 4 * GiB
    assert memory.budget_bytes(8 * GiB, 0.25) == 2 * GiB
    assert memory.budget_bytes(8 * GiB, 1.0) == 8 * GiB
    assert memory.budget_bytes(8 * GiB, 3 * GiB) == 3 * GiB
    assert memory.budget_bytes(8 * GiB, 12 * GiB) == 8 * GiB  # never more than is free


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (memory.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), True),
        (RuntimeError(CPU_ALLOC_ERROR), True),
        (RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"), True),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"), False),
        (ValueError("could not allocate"), False),  # only RuntimeErrors come from allocators
    ],
)
def test_is_out_of_memory(error, expected):
    assert memory.is_out_of_memory(error) is expected


# ------------------------------------------------------------------------------ free memory of a device
def test_free_memory_of_the_cpu_is_the_available_ram():
    free = memory.free_memory("cpu")
    assert isinstance(free, int) and free > 0
    meminfo = memory._meminfo_available()
    assert meminfo is None or free <= meminfo


def test_free_memory_of_the_cpu_falls_back(monkeypatch):
    monkeypatch.setattr(memory, "_meminfo_available", lambda: None)
    monkeypatch.setattr(memory, "_cgroup_available", lambda: None)
    monkeypatch.setattr(memory, "_sysconf_available", lambda: 3 * GiB)
    assert memory.free_memory(torch.device("cpu")) == 3 * GiB
    monkeypatch.setattr(memory, "_sysconf_available", lambda: None)
    assert memory.free_memory("cpu") == memory.FALLBACK_FREE_BYTES
    monkeypatch.setattr(memory, "_cgroup_available", lambda: GiB)  # a container's limit
    assert memory.free_memory("cpu") == GiB
    monkeypatch.setattr(memory, "_meminfo_available", lambda: 5 * GiB)
    assert memory.free_memory("cpu") == GiB


def test_free_memory_of_cuda_adds_what_the_caching_allocator_holds_unused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (10 * GiB, 80 * GiB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 3 * GiB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 2 * GiB)
    assert memory.free_memory("cuda:0") == 11 * GiB


def test_free_memory_of_mps(monkeypatch):
    monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: 16 * GiB, raising=False)
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: 6 * GiB, raising=False)
    assert memory.free_memory("mps") == 10 * GiB


# ------------------------------------------------------------------------------ the planned default
def test_plan_from_simulated_free_memory_gives_the_expected_rows(bert, monkeypatch):
    batch = text_batch(lengths=(7, 7, 7))  # one length group: 3 examples of 7 tokens
    row, state = _bytes(bert, 7, layer=0)
    # a budget (half the free memory) for the group's state and exactly 9 rows: 3 steps of 3 examples per pass
    calls = _simulate_free(monkeypatch, 2 * (3 * state + 9 * row + row // 2))
    planned = attribute(bert, batch, layers=[0], n_steps=6, return_convergence_delta=True)
    assert calls == [torch.device("cpu")]  # measured once per call, on the model's device
    assert planned.rows_per_pass == 9
    explicit = attribute(bert, batch, layers=[0], n_steps=6, internal_batch_size=9, return_convergence_delta=True)
    _assert_equal(planned, explicit)  # the same passes as the explicit size
    at_once = attribute(bert, batch, layers=[0], n_steps=6, internal_batch_size=10**6)
    _assert_same(planned, at_once)
    assert at_once.rows_per_pass == 18  # every pass was smaller than the limit: the largest is reported


def test_plenty_of_memory_runs_everything_at_once_bit_identically(bert, monkeypatch):
    batch = text_batch(lengths=(7, 4, 6, 7, 3))
    _simulate_free(monkeypatch, 64 * GiB)
    planned = attribute(bert, batch, n_steps=6, return_convergence_delta=True)
    at_once = attribute(bert, batch, n_steps=6, internal_batch_size=10**9, return_convergence_delta=True)
    _assert_equal(planned, at_once)
    assert torch.equal(planned.convergence_delta, at_once.convergence_delta)
    assert planned.rows_per_pass == at_once.rows_per_pass == 3 * 6  # the largest length group, all steps


def test_planned_passes_on_a_gpu_stop_at_the_ceiling(bert, monkeypatch):
    batch = text_batch(lengths=(7, 7, 7))
    _simulate_free(monkeypatch, 64 * GiB)
    monkeypatch.setattr(memory, "max_planned_rows", lambda device: 4)  # as on CUDA, with a small ceiling
    planned = attribute(bert, batch, layers=[0], n_steps=6, return_convergence_delta=True)
    assert planned.rows_per_pass == 3  # one step of the three examples per pass fits under 4 rows
    explicit = attribute(bert, batch, layers=[0], n_steps=6, internal_batch_size=4, return_convergence_delta=True)
    _assert_equal(planned, explicit)
    monkeypatch.undo()
    assert memory.max_planned_rows("cuda") == memory.GPU_MAX_ROWS and memory.max_planned_rows("cpu") is None


def test_higher_layers_get_more_rows(bert, monkeypatch):
    batch = text_batch(lengths=(7,))
    row0, state = _bytes(bert, 7, layer=0)
    row2, _ = _bytes(bert, 7, layer=2)
    assert row2 < row0
    _simulate_free(monkeypatch, 2 * (state + 2 * row0))
    low = attribute(bert, batch, layers=[0], n_steps=8)
    high = attribute(bert, batch, layers=[2], n_steps=8)
    assert low.rows_per_pass == 2
    assert high.rows_per_pass == min(8, (2 * row0) // row2)


def test_planned_groups_split_when_one_step_of_every_example_does_not_fit(bert, monkeypatch):
    batch = text_batch(lengths=(7, 7, 7, 7))
    row, state = _bytes(bert, 7, layer=0)
    _simulate_free(monkeypatch, 2 * (2 * (row + state)))  # two examples with one row each
    planned = attribute(bert, batch, layers=[0], n_steps=4)
    assert planned.rows_per_pass == 2
    _assert_same(planned, attribute(bert, batch, layers=[0], n_steps=4, internal_batch_size=10**6))


def test_explicit_internal_batch_size_is_used_as_given_without_measuring(bert, monkeypatch):
    calls = _simulate_free(monkeypatch, 1)  # would force one row per pass if it were asked
    result = attribute(bert, text_batch(lengths=(7, 7, 7)), n_steps=6, internal_batch_size=6)
    assert calls == []
    assert result.rows_per_pass == 6


# ------------------------------------------------------------------------------ memory_budget
@pytest.mark.parametrize("method", ["gausslegendre", "riemann_left"])
def test_a_tiny_budget_forces_chunking_and_changes_nothing(bert, method):
    batch = text_batch(lengths=(7, 4, 6, 7, 3))
    full = attribute(bert, batch, n_steps=6, method=method, internal_batch_size=10**6, return_convergence_delta=True)
    row, state = _bytes(bert, 7, layer=0, n_attributed=3)
    tiny = attribute(
        bert, batch, n_steps=6, method=method, memory_budget=3 * (row + state), return_convergence_delta=True
    )
    assert tiny.rows_per_pass == 3
    _assert_same(tiny, full)
    torch.testing.assert_close(tiny.convergence_delta, full.convergence_delta, rtol=0, atol=1e-7)


def test_budget_as_a_fraction_of_the_free_memory(bert, monkeypatch):
    batch = text_batch(lengths=(7, 7, 7))
    row, state = _bytes(bert, 7, layer=0)
    _simulate_free(monkeypatch, 10 * (3 * state + 6 * row + row // 2))
    assert attribute(bert, batch, layers=[0], n_steps=6, memory_budget=0.1).rows_per_pass == 6
    assert attribute(bert, batch, layers=[0], n_steps=6, memory_budget=1.0).rows_per_pass == 18
    # bytes above the free memory are capped at it
    assert attribute(bert, batch, layers=[0], n_steps=6, memory_budget=10**15).rows_per_pass == 18


def test_a_tiny_budget_with_adaptive_integration_changes_nothing(bert64):
    batch = text_batch(lengths=(7, 4, 6))
    full = attribute(bert64, batch, completeness_tol=1e-9, internal_batch_size=10**6)
    row = memory.row_bytes(bert64.config, 7, 3, torch.float64)
    tiny = attribute(bert64, batch, completeness_tol=1e-9, memory_budget=4 * row)
    assert tiny.rows_per_pass is not None and tiny.rows_per_pass < full.rows_per_pass
    _assert_same(tiny, full, rtol=1e-12)
    assert torch.equal(tiny.n_steps_used, full.n_steps_used)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        (dict(memory_budget=0), ValueError, r"`memory_budget` to be None, a number of bytes .*, but got 0\."),
        (dict(memory_budget=-GiB), ValueError, "`memory_budget` to be None, a number of bytes"),
        (dict(memory_budget=0.0), ValueError, r"fraction of the free memory in \(0, 1\], but got 0\.0\."),
        (dict(memory_budget=1.5), ValueError, r"in \(0, 1\], but got 1\.5\."),
        (dict(memory_budget=float("nan")), ValueError, r"but got nan\."),
        (dict(memory_budget=True), TypeError, r"but got True\."),
        (dict(memory_budget="12GB"), TypeError, r"but got '12GB'\."),
        (
            dict(memory_budget=0.5, internal_batch_size=8),
            ValueError,
            "`memory_budget` to be None when `internal_batch_size` is given",
        ),
    ],
)
def test_bad_memory_budget(bert, kwargs, exc, match):
    with pytest.raises(exc, match=match) as info:
        attribute(bert, text_batch(), **kwargs)
    assert isinstance(info.value, UserError)  # the entry points print it as one line
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------ out of memory: halve and retry
def _fail_above(
    model, limit: int, error=lambda: memory.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
):
    """A classifier hook that fails integration passes (those with gradients) of more than `limit` rows."""
    sizes = []

    def hook(_module, args):
        if torch.is_grad_enabled():
            sizes.append(args[0].shape[0])
            if args[0].shape[0] > limit:
                raise error()

    return sizes, model.classifier.register_forward_pre_hook(hook)


# 18 rows fail, then 9: under a limit of 4 a pass takes one step of the 3 examples; under a limit of 2 the
# passes of 3 rows fail too, and a pass takes one example at one step
@pytest.mark.parametrize(("limit", "cap", "rows"), [(4, 4, 3), (2, 1, 1)])
def test_out_of_memory_halves_the_pass_warns_once_and_changes_nothing(bert, limit, cap, rows):
    batch = text_batch(lengths=(7, 7, 7))  # 3 examples x 6 steps = 18 rows at once
    full = attribute(bert, batch, n_steps=6, return_convergence_delta=True)
    sizes, handle = _fail_above(bert, limit)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            halved = attribute(bert, batch, n_steps=6, return_convergence_delta=True)
    finally:
        handle.remove()
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "A pass of 18 rows (examples x integration steps) ran out of memory; passes were halved" in message
    assert f"retried, down to {cap} rows per pass (results are unchanged)" in message
    assert f"Pass internal_batch_size={cap} or a smaller memory_budget" in message
    assert caught[0].filename == __file__  # points at the caller of attribute()
    assert halved.rows_per_pass == rows
    assert max(s for s in sizes if s <= limit) == rows
    _assert_same(halved, full)
    torch.testing.assert_close(halved.convergence_delta, full.convergence_delta, rtol=0, atol=1e-7)
    explicit = attribute(bert, batch, n_steps=6, internal_batch_size=rows, return_convergence_delta=True)
    if rows == 3:  # 18 -> 9 -> 4 rows: one step of the 3 examples per pass, as internal_batch_size=3
        _assert_equal(halved, explicit)


@pytest.mark.parametrize(("limit", "cap"), [(3, 2), (1, 1)])  # 8 -> 4 -> 2 rows; 2 -> 1 row: one example per pass
def test_out_of_memory_on_the_cpu_allocator_is_halved_too(bert, limit, cap):
    batch = text_batch(lengths=(7, 7))
    full = attribute(bert, batch, n_steps=4, method="riemann_left", return_convergence_delta=True)
    _, handle = _fail_above(bert, limit, lambda: RuntimeError(CPU_ALLOC_ERROR))
    try:
        with pytest.warns(UserWarning, match=rf"ran out of memory; passes were halved and retried, down to {cap} rows"):
            halved = attribute(bert, batch, n_steps=4, method="riemann_left", return_convergence_delta=True)
    finally:
        handle.remove()
    assert halved.rows_per_pass == cap
    _assert_same(halved, full)
    # F(0) comes from the alpha = 0 step, also when that step is split over the examples
    torch.testing.assert_close(halved.baseline_prob, full.baseline_prob, rtol=0, atol=1e-7)


def test_out_of_memory_halving_applies_to_an_explicit_size_and_adaptive_integration(bert):
    batch = text_batch(lengths=(7, 6, 7))
    full = attribute(bert, batch, internal_batch_size=30)
    _, handle = _fail_above(bert, 5)
    try:
        with pytest.warns(UserWarning, match="internal_batch_size=") as record:
            halved = attribute(bert, batch, internal_batch_size=30)
    finally:
        handle.remove()
    assert len(record) == 1
    assert halved.rows_per_pass is not None and halved.rows_per_pass <= 5
    _assert_same(halved, full)
    assert torch.equal(halved.n_steps_used, full.n_steps_used)


def test_a_single_row_that_does_not_fit_is_reraised_clearly(bert):
    _, handle = _fail_above(bert, 0)
    try:
        with pytest.raises(memory.OutOfMemoryError, match=r"single row .* of layer 0 with 7 tokens .*nothing smaller"):
            attribute(bert, text_batch(lengths=(7, 7)), n_steps=4)
    finally:
        handle.remove()
    _no_hooks(bert)
    assert all(p.requires_grad for p in bert.parameters())


def test_other_runtime_errors_are_not_retried(bert):
    _, handle = _fail_above(bert, 4, lambda: RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    try:
        with pytest.raises(RuntimeError, match="cannot be multiplied"):
            attribute(bert, text_batch(lengths=(7, 7, 7)), n_steps=4)
    finally:
        handle.remove()


# ------------------------------------------------------------------------------ the reported size
def test_rows_per_pass_of_shards_and_old_results():
    model = make_model("bert")
    batch = text_batch(lengths=(7, 4, 6))
    shards = [attribute(model, batch, n_steps=6, shard=(i, 2), internal_batch_size=4) for i in range(2)]
    assert [s.rows_per_pass for s in shards] == [4, 4]  # groups [4] and [6, 7]: 2 steps of 2 examples
    assert merge_shards(shards).rows_per_pass == 4
    old = AttributionResult([], (0,), torch.zeros(0), torch.zeros(0), None, None, "gausslegendre", 6)
    assert old.rows_per_pass is None  # constructed without the field: still valid
