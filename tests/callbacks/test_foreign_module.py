"""The callbacks on somebody else's LightningModule: a RoBERTa config, tuple batches, its own names.

Run under both Lightning packages: the user's module, Trainer and logger all come from
``lightning.pytorch`` or all from ``pytorch_lightning``, and the same callback classes serve both.
"""

import lightning.pytorch
import pytest
import pytorch_lightning
import torch
import transformers
from torch.utils.data import DataLoader, TensorDataset

from lightning_attattr.callbacks import AttributionMonitor, HeadImportanceCallback, HeadPruningCallback
from tests.callbacks.test_attribution_monitor import events

PACKAGES = {"pytorch_lightning": pytorch_lightning, "lightning.pytorch": lightning.pytorch}


class TheirModule(torch.nn.Module):
    """Written without this project in mind, except for the two protocol methods (a mixin: see `their_module`)."""

    def __init__(self):
        super().__init__()
        config = transformers.RobertaConfig(
            vocab_size=40,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=37,
            max_position_embeddings=40,
            num_labels=2,
        )
        self.encoder = transformers.RobertaForSequenceClassification(config)  # not called `model`
        self.head_scale = torch.nn.Parameter(torch.ones(()))

    # --- the protocol: where the HF model is, and how a batch becomes model inputs
    def attattr_model(self):
        return self.encoder

    def attattr_inputs(self, batch):
        ids, mask, labels = batch
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}

    def training_step(self, batch, batch_idx):
        ids, mask, labels = batch
        logits = self.encoder(input_ids=ids, attention_mask=mask).logits * self.head_scale
        return torch.nn.functional.cross_entropy(logits, labels)

    def validation_step(self, batch, batch_idx):
        ids, mask, labels = batch
        acc = (self.encoder(input_ids=ids, attention_mask=mask).logits.argmax(-1) == labels).float().mean()
        self.log("their_val_acc", acc)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def their_module(pl):
    """``TheirModule`` as a LightningModule of the Lightning package ``pl``."""
    return type("TheirModule", (TheirModule, pl.LightningModule), {})()


def loader(seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 40, (24, 10), generator=g)
    ids[:, 0] = 0
    mask = torch.ones_like(ids)
    mask[::2, 7:] = 0  # padded rows
    ids[mask == 0] = 1
    labels = (ids[:, 1] > 20).long()
    return DataLoader(TensorDataset(ids, mask, labels), batch_size=8)


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_callbacks_on_a_foreign_roberta_module(tmp_path, package):
    pl = PACKAGES[package]
    torch.manual_seed(0)
    module = their_module(pl)
    callbacks = [
        AttributionMonitor(n_examples=2, n_steps=3),
        HeadImportanceCallback(n_examples=6, n_steps=3, taylor=True),
        HeadPruningCallback(fractions=[0.0, 0.5, 1.0], n_examples=6, n_steps=3),
    ]
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        logger=pl.loggers.TensorBoardLogger(tmp_path, name="tb"),
        max_epochs=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        callbacks=callbacks,
    )
    trainer.fit(module, loader(0), loader(1))
    monitor, importance, pruning = callbacks
    maps = monitor.last_result["attributions"]
    assert [m.shape[-1] for m in maps] == [7, 10]  # the padded first example is cropped to its 7 tokens
    assert monitor.last_result["tokens"][0] == [str(int(i)) for i in loader(1).dataset[0][0][:7]]  # ids: no tokenizer
    assert importance.importance.shape == (2, 4)
    assert pruning.curves[0]["accuracy"][0] == trainer.callback_metrics["their_val_acc"].item()
    tags = events(trainer).Tags()
    assert {"attr/layer0/example0", "importance/attattr", "prune/curve"} <= set(tags["images"])
    assert {"attr/values_layer0", "attr/values_layer1"} <= set(tags["histograms"])
    assert module.encoder.config._attn_implementation != "attattr"


def test_mask_mode_pruning_needs_no_method_on_the_module(tmp_path):
    """Scheduled mask-mode pruning of a module without `set_head_mask`: the pruned heads are masked in
    every training forward (their query/key/value rows get no gradient and do not move) and in
    validation, and no attention scope is left on the model after fit."""
    pl = pytorch_lightning
    torch.manual_seed(0)
    module = their_module(pl)
    assert not hasattr(module, "set_head_mask")
    layers = module.encoder.roberta.encoder.layer
    before = {
        name: [getattr(layer.attention.self, name).weight.detach().clone() for layer in layers]
        for name in ("query", "key", "value")
    }
    pruning = HeadPruningCallback(fractions=[0.0], importance="random", schedule={0: 0.5}, mode="mask")
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        logger=False,
        max_epochs=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        callbacks=[pruning],
    )
    trainer.fit(module, loader(0), loader(1))
    mask = pruning.pruned_mask  # [layer, head]
    assert mask is not None and int((mask == 0).sum()) == 4  # half of the 8 heads
    size = 32 // 4
    for name, weights in before.items():
        for li, layer in enumerate(layers):
            after = getattr(layer.attention.self, name).weight.detach()
            for head in range(4):
                rows = slice(head * size, (head + 1) * size)
                moved = not torch.equal(after[rows], weights[li][rows])
                assert moved == bool(mask[li, head]), (name, li, head)
    assert module.encoder.config._attn_implementation != "attattr"  # scopes left after each batch
    assert pruning._mask_scope is None
    # validation of the pruned model: the accuracy the callback measured with the same mask applied
    trainer.validate(module, loader(1), verbose=False)
    assert trainer.callback_metrics["their_val_acc"].item() == pytest.approx(pruning.curves[-1]["accuracy"][0])
