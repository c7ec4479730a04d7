"""The callbacks on somebody else's LightningModule: a RoBERTa config, tuple batches, its own names."""

import pytorch_lightning as pl
import torch
import transformers
from pytorch_lightning.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

from lightning_attattr.callbacks import AttributionMonitor, HeadImportanceCallback, HeadPruningCallback
from tests.callbacks.test_attribution_monitor import events


class TheirModule(pl.LightningModule):
    """Written without this project in mind, except for the two protocol methods."""

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


def loader(seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 40, (24, 10), generator=g)
    ids[:, 0] = 0
    mask = torch.ones_like(ids)
    mask[::2, 7:] = 0  # padded rows
    ids[mask == 0] = 1
    labels = (ids[:, 1] > 20).long()
    return DataLoader(TensorDataset(ids, mask, labels), batch_size=8)


def test_callbacks_on_a_foreign_roberta_module(tmp_path):
    torch.manual_seed(0)
    module = TheirModule()
    callbacks = [
        AttributionMonitor(n_examples=2, n_steps=3),
        HeadImportanceCallback(n_examples=6, n_steps=3, taylor=True),
        HeadPruningCallback(fractions=[0.0, 0.5, 1.0], n_examples=6, n_steps=3),
    ]
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        logger=TensorBoardLogger(tmp_path, name="tb"),
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
    assert module.encoder.config._attn_implementation != "attattr"
