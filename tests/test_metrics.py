import pytest
import torch

from lightning_attattr.core.importance import attribution_head_scores, head_importance
from lightning_attattr.metrics import HeadImportance


def _scores(batch, seed, n_layers=3, n_heads=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, n_layers, n_heads, generator=g, dtype=torch.float64)


def test_update_compute_equals_the_functional_result():
    batches = [_scores(2, 0), _scores(3, 1), _scores(1, 2)]
    metric = HeadImportance(n_layers=3, n_heads=4)
    metric.set_dtype(torch.float64)
    for scores in batches:
        metric.update(scores)
    assert int(metric.count) == 6
    torch.testing.assert_close(metric.compute(), head_importance(torch.cat(batches)), rtol=1e-12, atol=1e-12)
    metric.reset()
    assert int(metric.count) == 0 and metric.score_sum.abs().max() == 0


def test_float32_default_and_scores_from_pooled_maps():
    maps = [torch.randn(3, 4, n, n, generator=torch.Generator().manual_seed(n)) for n in (5, 7)]
    scores = attribution_head_scores(maps)
    metric = HeadImportance(3, 4)
    metric.update(scores)
    assert metric.score_sum.dtype == torch.float32
    torch.testing.assert_close(metric.compute(), head_importance(scores))


def test_merged_states_equal_one_instance_fed_everything():
    """What DDP's sum reduction does: two ranks' states merged equal one process seeing all batches."""
    rank0, rank1, single = (HeadImportance(3, 4) for _ in range(3))
    for metric in (rank0, rank1, single):
        metric.set_dtype(torch.float64)
    rank0.update(_scores(2, 0))
    rank1.update(_scores(3, 1))
    rank1.update(_scores(1, 2))
    for seed, batch in ((0, 2), (1, 3), (2, 1)):
        single.update(_scores(batch, seed))
    summed = (rank0.score_sum + rank1.score_sum) / (rank0.count + rank1.count)
    rank0.merge_state(rank1)
    assert int(rank0.count) == 6
    torch.testing.assert_close(rank0.compute(), single.compute(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(summed, single.compute(), rtol=1e-12, atol=1e-12)


def test_bad_shape_and_arguments():
    metric = HeadImportance(3, 4)
    with pytest.raises(
        ValueError, match=r"`scores` of shape \[batch, layer, head\] = \['\*', 3, 4\], but got \[2, 4, 3\]"
    ):
        metric.update(torch.zeros(2, 4, 3))
    with pytest.raises(ValueError, match=r"= \['\*', 3, 4\], but got \[3, 4\]"):
        metric.update(torch.zeros(3, 4))
    with pytest.raises(TypeError, match=r"`scores` to be a tensor of shape \[batch, layer, head\], but got list"):
        metric.update([[[0.0]]])
    with pytest.raises(ValueError, match="`n_layers` to be a positive integer, but got 0"):
        HeadImportance(0, 4)
    with pytest.raises(TypeError, match="`n_heads` to be a positive integer, but got 4.0"):
        HeadImportance(3, 4.0)


def test_compute_without_examples_raises():
    metric = HeadImportance(3, 4)
    with (
        pytest.warns(UserWarning, match="before the ``update`` method"),
        pytest.raises(RuntimeError, match="at least one"),
    ):
        metric.compute()


def test_class_attributes():
    assert HeadImportance.full_state_update is False
    assert HeadImportance.higher_is_better is None


def test_sync_through_torchmetrics_with_a_simulated_two_rank_gather():
    """The real DDP code path (gather every state, reduce with `dist_reduce_fx`), without processes.

    A gloo process pool costs ~12 s to spawn here, and fork hangs once the parent has used OpenMP.
    """
    world: list[HeadImportance] = []

    def all_gather(tensor, group=None):
        caller = next(m for m in world if any(tensor is getattr(m, name) for name in ("score_sum", "count")))
        name = "score_sum" if tensor is caller.score_sum else "count"
        return [getattr(m, name) for m in world]

    world.extend(HeadImportance(3, 4, dist_sync_fn=all_gather, distributed_available_fn=lambda: True) for _ in range(2))
    for metric in world:
        metric.set_dtype(torch.float64)
    for seed in range(5):  # rank 0: batches 0, 2, 4; rank 1: batches 1, 3
        world[seed % 2].update(_scores(seed + 1, seed))
    expected = head_importance(torch.cat([_scores(seed + 1, seed) for seed in range(5)]))
    for metric in world:
        torch.testing.assert_close(metric.compute(), expected, rtol=1e-12, atol=1e-12)
    assert [int(m.count) for m in world] == [1 + 3 + 5, 2 + 4]  # local states restored after the synced compute
