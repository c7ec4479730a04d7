import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from lightning_attattr.core.adapter import attention_scope
from lightning_attattr.core.checks import UserError
from lightning_attattr.data.synthetic import make_synthetic, synthetic_tokenizer
from lightning_attattr.lightning.classifier import AttAttrClassifier

TINY = {
    "model_type": "bert",
    "vocab_size": 29,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 37,
}


def make_trainer(tmp_path, **kwargs):
    return pl.Trainer(
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        **kwargs,
    )


def loader(n=16, seed=0, batch_size=8):
    tok = synthetic_tokenizer()
    data = make_synthetic(n, seed=seed)

    def collate(rows):
        enc = tok([ex.text for ex in rows], padding=True, return_tensors="pt")
        return {**enc, "labels": torch.tensor([ex.label for ex in rows])}

    return DataLoader(data, batch_size=batch_size, collate_fn=collate)


def test_fits_and_logs_task_metrics(tmp_path):
    torch.manual_seed(0)
    module = AttAttrClassifier(model_config=TINY, num_labels=2, task="mrpc", learning_rate=1e-3)
    assert module.model.training  # ready to train (from_pretrained would return eval mode)
    trainer = make_trainer(tmp_path, max_epochs=1)
    before = [p.detach().clone() for p in module.parameters()]
    trainer.fit(module, loader(), loader(seed=1))
    assert {"train/loss", "val/loss", "val/acc", "val/f1"} <= set(trainer.logged_metrics)
    assert any(not torch.equal(a, b) for a, b in zip(before, module.parameters()))
    assert module.hparams.task == "mrpc" and module.hparams.model_config == TINY


def test_cola_gets_matthews_correlation():
    module = AttAttrClassifier(model_config=TINY, num_labels=2, task="CoLA")
    assert set(module.val_metrics.keys(keep_base=False)) == {"val/acc", "val/mcc"}


def test_optimizer_groups_and_warmup(tmp_path):
    module = AttAttrClassifier(model_config=TINY, num_labels=2, weight_decay=0.1, warmup_ratio=0.5)
    trainer = make_trainer(tmp_path, max_steps=4)
    trainer.fit(module, loader(n=32))
    optimizer = trainer.optimizers[0]
    decay, no_decay = optimizer.param_groups
    names = {id(p): n for n, p in module.named_parameters()}
    assert all("bias" in names[id(p)] or "LayerNorm" in names[id(p)] for p in no_decay["params"])
    assert not any("bias" in names[id(p)] or "LayerNorm" in names[id(p)] for p in decay["params"])
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert trainer.lr_scheduler_configs[0].interval == "step"


def test_head_mask_interface_matches_the_core_scope():
    torch.manual_seed(0)
    module = AttAttrClassifier(model_config=TINY, num_labels=2).eval()
    batch = next(iter(loader()))
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.5], [0.0, 1.0, 1.0, 1.0]])
    plain = module(batch)
    with attention_scope(module.model) as ctrl, ctrl.masked(mask):
        expected = module.model(**{k: v for k, v in batch.items() if k != "labels"}).logits
    with module.masked_heads(mask):
        torch.testing.assert_close(module(batch), expected)
        assert module.head_mask is not None
    assert module.head_mask is None
    torch.testing.assert_close(module(batch), plain)
    module.set_head_mask(torch.ones(2, 4))
    torch.testing.assert_close(module(batch), plain, rtol=1e-5, atol=1e-6)
    module.clear_head_mask()
    assert module.model.config._attn_implementation != "attattr"  # nothing left on the model


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({}, ValueError, "Expected `model_name_or_path` .* or `model_config` .* but got neither"),
        (dict(model_name_or_path="./no/such/model"), FileNotFoundError, "'./no/such/model' does not exist"),
        (dict(model_config=TINY, num_labels=1), ValueError, "`num_labels` to be an integer >= 2, but got 1"),
        (dict(model_config=TINY, task="stsb"), ValueError, r"`task` to be one of \[.*\], but got 'stsb'"),
        (dict(model_config=TINY, warmup_ratio=1.5), ValueError, "`warmup_ratio` in"),
        (dict(model_config={"hidden_size": 8}), ValueError, "`model_config` to contain `model_type`"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match) as info:
        AttAttrClassifier(**kwargs)
    assert isinstance(info.value, UserError)


def test_model_config_wins_over_the_recorded_model_name():
    """How checkpoints load: the stored config builds the model; the name is only a record (never loaded)."""
    module = AttAttrClassifier(model_name_or_path="org/never-downloaded", model_config=TINY)
    assert module.hparams.model_name_or_path == "org/never-downloaded" and module.n_layers == TINY["num_hidden_layers"]


def test_bad_head_masks():
    module = AttAttrClassifier(model_config=TINY, num_labels=2)
    with pytest.raises(ValueError, match=r"`mask` of shape \[layer, head\] = \[2, 4\], but got \[4, 2\]"):
        module.set_head_mask(torch.ones(4, 2))
    with pytest.raises(TypeError, match="`mask` to be a tensor or None"):
        module.set_head_mask([[1.0]])


def test_loads_a_local_model_directory_in_train_mode(tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification

    torch.manual_seed(0)
    config = AutoConfig.for_model(**{**TINY, "num_labels": 3})
    saved = AutoModelForSequenceClassification.from_config(config).eval()
    saved.save_pretrained(tmp_path / "model")
    module = AttAttrClassifier(model_name_or_path=str(tmp_path / "model"), num_labels=3)
    assert module.model.training and module.model.config.num_labels == 3
    module.eval()
    batch = next(iter(loader()))
    with torch.no_grad():
        expected = saved(**{k: v for k, v in batch.items() if k != "labels"}).logits
        torch.testing.assert_close(module(batch), expected)


def test_structural_pruning_matches_mask_and_survives_checkpoints(tmp_path):
    torch.manual_seed(0)
    module = AttAttrClassifier(model_config=TINY, num_labels=2, learning_rate=1e-3)
    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.fit(module, loader())  # trained weights, not the initialisation
    module.eval()
    batch = next(iter(loader(seed=3)))
    mask = torch.tensor([[1.0, 0.0, 1.0, 0.0], [0.0, 1.0, 1.0, 1.0]])
    with torch.no_grad(), module.masked_heads(mask):
        masked = module(batch)
    n_before = module.n_parameters
    report = module.prune_heads(mask)
    assert module.pruned_heads == {0: [1, 3], 1: [0]}
    assert report.n_parameters_before == n_before and module.n_parameters == report.n_parameters_after < n_before
    with torch.no_grad():
        torch.testing.assert_close(module(batch), masked, rtol=1e-5, atol=1e-6)

    # save_pretrained -> a new module from the directory keeps the pruned model
    module.model.save_pretrained(tmp_path / "hf")
    reloaded = AttAttrClassifier(model_name_or_path=str(tmp_path / "hf"), num_labels=2).eval()
    assert reloaded.pruned_heads == {0: [1, 3], 1: [0]}
    with torch.no_grad():
        torch.testing.assert_close(reloaded(batch), masked, rtol=1e-5, atol=1e-6)

    # the pruned model trains (optimizer built after pruning) and its Lightning checkpoint
    # rebuilds the pruned structure before the weights are loaded
    trainer = make_trainer(tmp_path, max_steps=2)
    trainer.fit(module, loader())
    trainer.save_checkpoint(tmp_path / "pruned.ckpt")
    module.eval()
    restored = AttAttrClassifier.load_from_checkpoint(tmp_path / "pruned.ckpt").eval()
    assert restored.pruned_heads == {0: [1, 3], 1: [0]} and restored.n_parameters == module.n_parameters
    with torch.no_grad():
        torch.testing.assert_close(restored(batch), module(batch))

    # resuming (weights, optimizer and schedule) from the pruned checkpoint
    fresh = AttAttrClassifier(model_config=TINY, num_labels=2, learning_rate=1e-3)
    resumed = make_trainer(tmp_path, max_steps=3)
    resumed.fit(fresh, loader(), ckpt_path=tmp_path / "pruned.ckpt")
    assert fresh.pruned_heads == {0: [1, 3], 1: [0]} and resumed.global_step == 3
