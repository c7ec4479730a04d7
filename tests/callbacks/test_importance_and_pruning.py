import pytest
import torch

from lightning_attattr.callbacks import HeadImportanceCallback, HeadPruningCallback
from lightning_attattr.callbacks.head_importance import spearman
from lightning_attattr.core.attribution import AttentionIntegratedGradients
from lightning_attattr.core.importance import PRUNING_FRACTIONS, attribution_head_scores, prune_mask
from tests.callbacks.test_attribution_monitor import events, setup_run


def test_importance_callback_equals_the_core_computation(tmp_path):
    cb = HeadImportanceCallback(n_examples=6, n_steps=3, batch_size=4, taylor=True)
    module, data, trainer = setup_run(tmp_path, [cb], max_epochs=1)
    trainer.fit(module, data)
    assert cb.importance is not None and cb.importance.shape == (2, 4) and len(cb.history) == 1
    # recompute directly from the same examples
    module.eval()
    from lightning_attattr.callbacks._protocol import pad_examples

    batch = pad_examples(cb.examples.rows)
    result = AttentionIntegratedGradients(module.model).attribute(batch, target="labels", n_steps=3)
    expected = attribution_head_scores(result, pooling="max").mean(0)
    torch.testing.assert_close(cb.importance, expected, rtol=1e-4, atol=1e-7)
    assert -1.0 <= cb.history[0]["spearman_taylor"] <= 1.0
    tags = events(trainer).Tags()
    assert {"importance/attattr", "importance/taylor"} <= set(tags["images"])
    assert {"importance/L0H0", "importance/L1H3", "importance/spearman_taylor"} <= set(tags["scalars"])


def test_spearman():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert spearman(a, a * 10) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)


def test_pruning_curve_matches_masked_evaluation(tmp_path):
    cb = HeadPruningCallback(n_examples=6, n_steps=2, batch_size=4)
    module, data, trainer = setup_run(tmp_path, [cb], max_epochs=1, limit_val_batches=None)
    trainer.fit(module, data)
    (curve,) = cb.curves
    assert curve["fractions"] == list(PRUNING_FRACTIONS) and len(curve["accuracy"]) == 11
    assert module.head_mask is None and module.model.config._attn_implementation != "attattr"  # model untouched
    # r = 0 is the unpruned validation accuracy; r = 1 and r = 0.5 equal a direct masked evaluation
    module.eval()
    loader = data.val_dataloader()

    def accuracy(mask):
        correct = total = 0
        with torch.no_grad(), module.masked_heads(mask):
            for batch in loader:
                correct += int((module(batch).argmax(-1) == batch["labels"]).sum())
                total += len(batch["labels"])
        return correct / total

    assert curve["accuracy"][0] == pytest.approx(accuracy(None))
    assert curve["accuracy"][5] == pytest.approx(accuracy(prune_mask(cb.importance, 0.5)))
    assert curve["accuracy"][-1] == pytest.approx(accuracy(torch.zeros(2, 4)))
    tags = events(trainer).Tags()
    assert "prune/curve" in tags["images"] and "prune/acc_r0.50" in tags["scalars"]


@pytest.mark.parametrize("mode", ["mask", "structural"])
def test_scheduled_pruning(tmp_path, mode):
    cb = HeadPruningCallback(fractions=[0.0], n_examples=4, n_steps=2, schedule={1: 0.25}, mode=mode)
    module, data, trainer = setup_run(tmp_path, [cb], max_epochs=2)
    n_before = module.n_parameters
    trainer.fit(module, data)
    (applied,) = cb.applied
    assert applied["epoch"] == 1 and sum(len(h) for h in applied["heads"].values()) == 2  # floor(0.25 * 8)
    if mode == "mask":
        assert torch.equal(module.head_mask, cb.pruned_mask)
    else:
        assert module.pruned_heads == applied["heads"]
        assert module.n_parameters < n_before
        optimizer_params = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
        assert all(id(p) in optimizer_params for p in module.parameters())  # optimizer rebuilt


def test_random_and_taylor_rankings(tmp_path):
    cbs = [
        HeadPruningCallback(fractions=[0.0, 0.5], importance=kind, n_examples=4, max_eval_batches=1)
        for kind in ("random", "taylor")
    ]
    module, data, trainer = setup_run(tmp_path, cbs, max_epochs=1, logger=False)
    trainer.validate(module, data)
    for cb in cbs:
        assert len(cb.curves) == 1 and cb.curves[0]["importance"].shape == (2, 4)


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (HeadImportanceCallback, {"pooling": "median"}, r"`pooling` to be one of \['max', 'mean', 'sum'\]"),
        (HeadImportanceCallback, {"n_examples": 0}, "`n_examples` to be a positive integer"),
        (HeadImportanceCallback, {"taylor_variant": "x"}, "`taylor_variant`"),
        (HeadPruningCallback, {"fractions": [0.5, 1.5]}, "`fractions`"),
        (
            HeadPruningCallback,
            {"importance": "gradient"},
            r"`importance` to be one of \['attattr', 'taylor', 'random'\]",
        ),
        (HeadPruningCallback, {"schedule": {0: 1.0}}, r"`schedule\[0\]`"),
        (HeadPruningCallback, {"mode": "hard"}, "`mode`"),
    ],
)
def test_bad_arguments(cls, kwargs, match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs)


def test_callback_state_survives_a_trainer_checkpoint(tmp_path):
    """Resuming keeps the probe/importance examples, the history and the pruning already applied."""
    from lightning_attattr.callbacks import AttributionMonitor

    cbs = [
        AttributionMonitor(n_examples=2, n_steps=2, log_images=False),
        HeadImportanceCallback(n_examples=3, n_steps=2),
        HeadPruningCallback(fractions=[0.0], n_examples=3, n_steps=2, schedule={1: 0.25}),
    ]
    module, data, trainer = setup_run(tmp_path, cbs, max_epochs=2)
    trainer.fit(module, data)
    trainer.save_checkpoint(tmp_path / "run.ckpt")

    fresh = [
        AttributionMonitor(n_examples=2, n_steps=2, log_images=False),
        HeadImportanceCallback(n_examples=3, n_steps=2),
        HeadPruningCallback(fractions=[0.0], n_examples=3, n_steps=2, schedule={1: 0.25}),
    ]
    module2, data2, trainer2 = setup_run(tmp_path, fresh, max_epochs=3)
    trainer2.fit(module2, data2, ckpt_path=tmp_path / "run.ckpt")
    monitor, importance, pruning = fresh
    for a, b in zip(monitor.probe, cbs[0].probe):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert monitor.analyses_done == 3  # two before the checkpoint, one after
    assert len(importance.history) == 3 and torch.equal(importance.history[0]["attattr"], cbs[1].history[0]["attattr"])
    assert pruning.applied == cbs[2].applied and len(pruning.applied) == 1  # not applied twice
    assert torch.equal(module2.head_mask, cbs[2].pruned_mask)  # mask pruning re-applied on resume


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_importance_under_a_mixed_precision_trainer_is_the_fp32_computation(tmp_path, precision):
    # the trainer's precision decides the user's steps; the attribution keeps its own (fp32 by default)
    cb = HeadImportanceCallback(n_examples=6, n_steps=3, batch_size=4)
    module, data, trainer = setup_run(tmp_path, [cb], logger=False, precision=precision)
    trainer.validate(module, data)
    assert cb.importance is not None
    module.eval()
    from lightning_attattr.callbacks._protocol import pad_examples

    batch = pad_examples(cb.examples.rows)
    result = AttentionIntegratedGradients(module.model).attribute(batch, target="labels", n_steps=3)
    expected = attribution_head_scores(result, pooling="max").mean(0)
    torch.testing.assert_close(cb.importance, expected, rtol=1e-5, atol=1e-8)


def test_structural_pruning_of_a_grouped_query_llama_removes_whole_groups(tmp_path):
    llama = {
        "model_type": "llama",
        "vocab_size": 29,
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 37,
        "max_position_embeddings": 64,
        "pad_token_id": 0,
    }
    import pytorch_lightning as pl

    from lightning_attattr.data.modules import SyntheticDataModule
    from lightning_attattr.lightning.classifier import AttAttrClassifier

    torch.manual_seed(0)
    module = AttAttrClassifier(model_config=llama, num_labels=2, task="synthetic", learning_rate=1e-3)
    data = SyntheticDataModule(n_train=32, n_val=16, train_batch_size=16, eval_batch_size=16)
    cb = HeadPruningCallback(
        fractions=[0.0, 0.5], n_examples=4, n_steps=2, batch_size=2, schedule={1: 0.5}, mode="structural"
    )
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=2,
        limit_train_batches=1,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        callbacks=[cb],
    )
    trainer.fit(module, data)
    # half of the 4 key/value groups (2 per layer), each with both of its query heads
    (applied,) = cb.applied
    removed = {int(layer): heads for layer, heads in applied["heads"].items()}
    assert sum(len(h) for h in removed.values()) == 4
    assert all(sorted(h) in ([0, 1], [2, 3], [0, 1, 2, 3]) for h in removed.values())
    for layer, attention in enumerate(layer.self_attn for layer in module.model.model.layers):
        kept_groups = 2 - len(removed.get(layer, [])) // 2
        assert attention.k_proj.weight.shape[0] == kept_groups * 8  # head_dim 8
        assert attention.q_proj.weight.shape[0] == (4 - len(removed.get(layer, []))) * 8


@pytest.mark.parametrize("pooling", ["max", "mean", "sum"])
def test_importance_pools_each_layer_as_it_is_done_and_equals_pooling_the_full_maps(tmp_path, monkeypatch, pooling):
    from lightning_attattr.callbacks._protocol import pad_examples
    from lightning_attattr.core.reductions import HeadScores

    reductions = []
    attribute = AttentionIntegratedGradients.attribute

    def spy(self, *args, **kwargs):
        reductions.append(kwargs.get("reduction"))
        return attribute(self, *args, **kwargs)

    monkeypatch.setattr(AttentionIntegratedGradients, "attribute", spy)
    cb = HeadImportanceCallback(n_examples=5, n_steps=3, batch_size=2, pooling=pooling)
    module, data, trainer = setup_run(tmp_path, [cb], logger=False)
    trainer.validate(module, data)
    assert reductions == [HeadScores(pooling)] * 3  # batches of 2, 2 and 1: no full maps kept
    module.eval()
    batch = pad_examples(cb.examples.rows)
    full = attribute(AttentionIntegratedGradients(module.model), batch, target="labels", n_steps=3)
    expected = attribution_head_scores(full, pooling=pooling).mean(0)  # [layer, head]
    torch.testing.assert_close(cb.importance, expected, rtol=1e-6, atol=1e-9)
