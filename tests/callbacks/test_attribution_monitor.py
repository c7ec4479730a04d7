import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_attattr.callbacks import AttributionMonitor
from lightning_attattr.core.attribution import AttentionIntegratedGradients
from lightning_attattr.data.modules import SyntheticDataModule
from lightning_attattr.lightning.classifier import AttAttrClassifier

TINY = {
    "model_type": "bert",
    "vocab_size": 29,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 37,
    "max_position_embeddings": 32,
}


def setup_run(tmp_path, callbacks, logger=True, **trainer_kwargs):
    torch.manual_seed(0)
    module = AttAttrClassifier(model_config=TINY, num_labels=2, task="synthetic", learning_rate=1e-3)
    data = SyntheticDataModule(n_train=64, n_val=32, train_batch_size=16, eval_batch_size=16)
    kwargs = dict(max_epochs=2, limit_train_batches=2, limit_val_batches=2, num_sanity_val_steps=1)
    kwargs.update(trainer_kwargs)
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        logger=TensorBoardLogger(tmp_path, name="tb") if logger else False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        callbacks=callbacks,
        **kwargs,
    )
    return module, data, trainer


def events(trainer):
    acc = EventAccumulator(trainer.logger.log_dir, size_guidance={"images": 0, "scalars": 0, "histograms": 0})
    acc.Reload()
    return acc


def test_monitor_logs_images_scalars_histograms_and_saves_maps(tmp_path):
    monitor = AttributionMonitor(n_examples=3, n_steps=4, max_image_examples=2)
    module, data, trainer = setup_run(tmp_path, [monitor])
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    trainer.fit(module, data)
    assert monitor.analyses_done == 2  # two epochs, sanity check skipped

    tags = events(trainer).Tags()
    for layer in (0, 1):
        assert f"attr/completeness_layer{layer}" in tags["scalars"]
        assert [e.value for e in events(trainer).Scalars(f"attr/steps_layer{layer}")] == [4.0, 4.0]  # fixed rule
        assert f"attr/values_layer{layer}" in tags["histograms"]
        for i in (0, 1):
            assert f"attr/layer{layer}/example{i}" in tags["images"]
            assert f"attr_heads/layer{layer}/example{i}" in tags["images"]
        assert f"attr/layer{layer}/example2" not in tags["images"]  # max_image_examples
    image = events(trainer).Images("attr/layer0/example0")
    assert len(image) == 2 and image[0].width > 100 and image[0].height > 100

    saved_dir = tmp_path / "tb" / "version_0" / "attributions"
    assert {p.name for p in saved_dir.iterdir()} == {"probe.pt", "epoch=000.pt", "epoch=001.pt"}
    last = torch.load(saved_dir / "epoch=001.pt", weights_only=False)
    probe = torch.load(saved_dir / "probe.pt", weights_only=False)
    assert len(last["attributions"]) == 3 and last["layers"] == [0, 1]
    # the saved maps are the attribution of the final model on the probe set, token labels included
    module.eval()
    for row, maps, tokens in zip(probe, last["attributions"], last["tokens"]):
        assert tokens[0] == "[CLS]" and len(tokens) == maps.shape[-1] == row["input_ids"].shape[0]
        direct = AttentionIntegratedGradients(module.model).attribute(
            {k: v[None] for k, v in row.items() if k != "labels"}, n_steps=4
        )
        torch.testing.assert_close(maps, direct.attributions[0], rtol=1e-4, atol=1e-7)
    assert last["convergence_delta"].shape == (3, 2)
    # the histogram holds every attribution value of the layer: heads x n x n per probe example
    hist = events(trainer).Histograms("attr/values_layer1")[-1].histogram_value
    assert hist.num == sum(m[1].numel() for m in last["attributions"])
    torch.testing.assert_close(hist.max, max(float(m[1].max()) for m in last["attributions"]))
    # training was not disturbed: parameters changed by the optimizer only, no stray gradients kept
    assert any(not torch.equal(before[n], p) for n, p in module.named_parameters())
    assert module.model.config._attn_implementation != "attattr"


def test_monitor_runs_under_validate_and_test_and_keeps_the_probe(tmp_path):
    monitor = AttributionMonitor(n_examples=2, n_steps=2, log_images=False)
    module, data, trainer = setup_run(tmp_path, [monitor], logger=False)
    trainer.validate(module, data)
    trainer.test(module, data)
    assert monitor.analyses_done == 2
    module.train()
    state = monitor.state_dict()
    restored = AttributionMonitor(n_examples=2)
    restored.load_state_dict(state)
    for a, b in zip(restored.probe, monitor.probe):
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert not any(p.grad is not None for p in module.parameters())


def test_every_n_epochs(tmp_path):
    monitor = AttributionMonitor(n_examples=1, n_steps=2, every_n_epochs=2, log_images=False)
    module, data, trainer = setup_run(tmp_path, [monitor], max_epochs=3)
    trainer.fit(module, data)
    assert monitor.analyses_done == 2  # epochs 0 and 2


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_examples": 0}, "`n_examples` to be a positive integer, but got 0"),
        ({"every_n_epochs": 1.5}, "`every_n_epochs` to be a positive integer"),
        ({"method": "simpson"}, "`method`"),
        ({"target": "gold"}, r"`target` to be one of \['predicted', 'labels'\], but got 'gold'"),
        ({"n_steps": 0}, "`n_steps`"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        AttributionMonitor(**kwargs)


def test_adaptive_monitor_keeps_the_logged_completeness_gap_below_the_tolerance(tmp_path):
    monitor = AttributionMonitor(n_examples=3, log_images=False)  # n_steps="auto", completeness_tol=1e-3
    module, data, trainer = setup_run(tmp_path, [monitor])
    trainer.fit(module, data)
    acc = events(trainer)
    for layer in (0, 1):
        gaps = [e.value for e in acc.Scalars(f"attr/completeness_layer{layer}")]
        steps = [e.value for e in acc.Scalars(f"attr/steps_layer{layer}")]
        assert len(gaps) == 2 and max(gaps) <= 1e-3
        assert len(steps) == 2 and all(3 <= s <= 63 for s in steps)  # mean nodes over the probe examples
    saved = monitor.last_result
    assert saved["n_steps"] == "auto" and not bool(saved["unconverged"].any())


def test_log_trees_logs_attribution_tree_images(tmp_path):
    monitor = AttributionMonitor(
        n_examples=2, n_steps=2, log_images=False, log_histograms=False, log_trees=True, tree_tau=0.3
    )
    module, data, trainer = setup_run(tmp_path, [monitor], max_epochs=1)
    trainer.fit(module, data)
    images = events(trainer).Tags()["images"]
    assert sorted(t for t in images if t.startswith("attr_tree/")) == ["attr_tree/example0", "attr_tree/example1"]
    assert not any(t.startswith("attr/layer") for t in images)  # log_images=False still holds
    tree = events(trainer).Images("attr_tree/example0")
    assert len(tree) == 1 and tree[0].width > 100 and tree[0].height > 100


def test_log_trees_needs_all_layers(tmp_path):
    monitor = AttributionMonitor(n_examples=1, n_steps=2, layers=[1], log_images=False, log_trees=True)
    module, data, trainer = setup_run(tmp_path, [monitor], max_epochs=2)
    with pytest.warns(UserWarning, match="`log_trees` needs all 2 layers") as record:
        trainer.fit(module, data)
    assert sum("log_trees" in str(w.message) for w in record) == 1  # warned once over two analyses
    assert not any(t.startswith("attr_tree/") for t in events(trainer).Tags()["images"])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tree_tau": 0}, r"Expected `tree_tau` to be a number in \(0, 1\], but got 0\."),
        ({"tree_tau": 2.0}, r"`tree_tau`"),
        ({"log_trees": "yes"}, r"`log_trees` to be True or False"),
    ],
)
def test_bad_tree_arguments(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        AttributionMonitor(**kwargs)


def test_figure_titles_count_epochs_from_one_like_the_console(tmp_path, monkeypatch):
    import re

    import lightning_attattr.plotting as plotting
    from lightning_attattr.callbacks import HeadImportanceCallback, HeadPruningCallback

    titles = []
    for name in ("token_heatmap", "tree_figure", "importance_heatmap", "pruning_curve"):
        original = getattr(plotting, name)

        def record(*args, _original=original, **kwargs):
            titles.append(kwargs.get("title"))
            return _original(*args, **kwargs)

        monkeypatch.setattr(plotting, name, record)
    callbacks = [
        AttributionMonitor(n_examples=1, n_steps=2, max_image_examples=1, log_histograms=False, log_trees=True),
        HeadImportanceCallback(n_examples=2, n_steps=2),
        HeadPruningCallback(n_examples=2, n_steps=2, fractions=[0.0, 0.5]),
    ]
    module, data, trainer = setup_run(tmp_path, callbacks)  # two epochs: "epoch 1" and "epoch 2"
    trainer.fit(module, data)
    epochs = {int(m) for t in titles if t for m in re.findall(r"epoch (\d+)", t)}
    assert epochs == {1, 2}, titles
    kinds = {t.split(",")[0] for t in titles if t}
    assert {"attribution tree", "attattr head importance", "pruning curve"} <= kinds, kinds


def test_rows_and_top_k_save_the_reduction_of_the_full_maps(tmp_path):
    # three monitors on the same probe set and model: full maps, two rows, the 5 largest edges
    full = AttributionMonitor(n_examples=3, n_steps=3, log_images=False)
    rows = AttributionMonitor(n_examples=3, n_steps=3, rows=[-1, 1], save_dir=str(tmp_path / "rows"))
    top = AttributionMonitor(n_examples=3, n_steps=3, log_trees=True, top_k=5, save_dir=str(tmp_path / "top"))
    module, data, trainer = setup_run(tmp_path, [full, rows, top], max_epochs=1)
    with pytest.warns(UserWarning, match=r"draw full maps, but the maps are reduced \(\{'rows': \[-1, 1\]\}\)"):
        trainer.fit(module, data)
    saved = torch.load(tmp_path / "rows" / "epoch=000.pt", weights_only=False)
    assert "attributions" not in saved and saved["reduction"] == {"rows": [-1, 1]}
    best = torch.load(tmp_path / "top" / "epoch=000.pt", weights_only=False)
    assert best["reduction"] == {"top_k": 5} and full.last_result["reduction"] is None
    for i, maps in enumerate(full.last_result["attributions"]):  # [layer, head, n, n]
        n = maps.shape[-1]
        assert saved["query_positions"][i].tolist() == [n - 1, 1]
        torch.testing.assert_close(saved["rows"][i], maps[:, :, [n - 1, 1]], rtol=1e-6, atol=1e-9)
        flat = maps.flatten(1)  # [layer, head * n * n]
        torch.testing.assert_close(best["top_values"][i], flat.gather(1, flat.abs().topk(5, dim=1).indices))
        where = best["top_indices"][i]  # [layer, 5, 3]: (head, query, key) of each kept value
        layer = torch.arange(2)[:, None].expand(-1, 5)
        torch.testing.assert_close(maps[layer, where[..., 0], where[..., 1], where[..., 2]], best["top_values"][i])
    torch.testing.assert_close(saved["convergence_delta"], full.last_result["convergence_delta"])
    # the histograms hold the kept values; no heatmaps or trees are drawn from reduced maps
    tags = events(trainer).Tags()
    images = [t for t in tags["images"] if t.startswith(("attr/", "attr_heads/", "attr_tree/"))]
    assert images == [] and "attr/values_layer1" in tags["histograms"]
    hists = events(trainer).Histograms("attr/values_layer1")
    assert sorted(h.histogram_value.num for h in hists) == sorted(
        [
            sum(m[1].numel() for m in full.last_result["attributions"]),
            2 * 4 * sum(r.shape[-1] for r in saved["rows"]),
            15,
        ]
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"rows": [0, 0]},
            r"^Expected `rows` to be None or a list of distinct int query positions .*, but got \[0, 0\]\.$",
        ),
        ({"rows": -1}, r"^Expected `rows` to be None or a list of distinct int"),
        ({"top_k": 0}, r"^Expected `top_k` to be None or a positive integer, but got 0\.$"),
        ({"top_k": 2, "rows": [1]}, r"^Expected at most one of `rows` and `top_k`"),
    ],
)
def test_bad_reduction_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AttributionMonitor(**kwargs)
