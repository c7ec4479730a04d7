"""Run the callbacks under `trainer.validate` with N processes; rank 0 saves what they computed.

Used by tests/callbacks/test_ddp.py as `python ddp_worker.py DEVICES OUT [ACCELERATOR [PRECISION]]`
(Lightning's `ddp` strategy re-executes this script for rank 1, so it must be a standalone script, not a
pytest process). The Lightning package (`lightning.pytorch` or `pytorch_lightning`) is the one
`ATTATTR_LIGHTNING` names.

ACCELERATOR: `cpu` (default, gloo), `gpu` (NCCL, one GPU per rank: needs DEVICES GPUs) or
`shared-cpu` / `shared-gpu`: DEVICES ranks on ONE device over gloo (how two ranks are shown on a
machine with a single GPU; `shared-cpu` checks the same wiring without a GPU).
"""

import sys

import torch

from lightning_attattr.callbacks import AttributionMonitor, HeadImportanceCallback, HeadPruningCallback
from lightning_attattr.data.modules import SyntheticDataModule
from lightning_attattr.lightning.classifier import AttAttrClassifier
from lightning_attattr.lightning.compat import pl

TINY = {
    "model_type": "bert",
    "vocab_size": 29,
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 37,
    "max_position_embeddings": 32,
}


def _placement(devices: int, accelerator: str) -> dict:
    """The Trainer's accelerator, devices and strategy for ``devices`` ranks on ``accelerator``."""
    if accelerator.startswith("shared-"):
        kind = accelerator.removeprefix("shared-")
        device = torch.device("cuda", 0) if kind == "gpu" else torch.device("cpu")
        strategy = pl.strategies.DDPStrategy(parallel_devices=[device] * devices, process_group_backend="gloo")
        return {"accelerator": kind, "devices": 1, "strategy": strategy}
    return {"accelerator": accelerator, "devices": devices, "strategy": "ddp" if devices > 1 else "auto"}


def main(devices: int, out: str, accelerator: str = "cpu", precision: str = "32-true") -> None:
    torch.manual_seed(0)
    module = AttAttrClassifier(model_config=TINY, num_labels=2, task="synthetic")
    data = SyntheticDataModule(n_train=32, n_val=32, eval_batch_size=8)
    # adaptive (the default): ranks must take the same refinement decisions from all-reduced terms
    monitor = AttributionMonitor(n_examples=3, log_images=False)
    # reduced maps: rows add up over the ranks' shares of the steps; the top edges are computed on every rank
    rows = AttributionMonitor(n_examples=3, log_images=False, rows=[-1, 0])
    top = AttributionMonitor(n_examples=3, log_images=False, top_k=4)
    importance = HeadImportanceCallback(n_examples=7, n_steps=5, batch_size=2, taylor=True)
    pruning = HeadPruningCallback(fractions=[0.0, 0.25, 0.5, 1.0], n_examples=5, n_steps=4, batch_size=2)
    trainer = pl.Trainer(
        **_placement(devices, accelerator),
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[monitor, rows, top, importance, pruning],
    )
    trainer.validate(module, data, verbose=False)
    if trainer.is_global_zero:
        torch.save(
            {
                "world_size": trainer.world_size,
                "device": str(module.device),
                "package": type(trainer).__module__.split(".trainer")[0],
                "maps": monitor.last_result["attributions"],
                "delta": monitor.last_result["convergence_delta"],
                "steps_used": monitor.last_result["n_steps_used"],
                "rows": rows.last_result["rows"],
                "top_values": top.last_result["top_values"],
                "top_indices": top.last_result["top_indices"],
                "importance": importance.importance,
                "taylor": importance.taylor_importance,
                "prune_importance": pruning.importance,
                "accuracy": pruning.curves[-1]["accuracy"],
            },
            out,
        )


if __name__ == "__main__":
    main(int(sys.argv[1]), *sys.argv[2:])
