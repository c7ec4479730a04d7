"""Export a Lightning checkpoint of ``AttAttrClassifier`` as a Hugging Face model directory.

    python -m lightning_attattr.export runs/sst2/version_0/checkpoints/last.ckpt exported/sst2

The directory holds ``config.json``, ``model.safetensors`` and (when the checkpoint stored one)
the tokenizer files; load it with ``from_pretrained_pruned`` (or plain ``from_pretrained`` when no
head was pruned) and ``AutoTokenizer.from_pretrained``, offline. ``--help`` lists the arguments.
"""

from __future__ import annotations

from pathlib import Path

from lightning_attattr.core.checks import exit_on_user_error


def export(checkpoint: str, output_dir: str) -> None:
    """Write the model (and tokenizer) of a checkpoint as a Hugging Face directory.

    Args:
        checkpoint: a ``.ckpt`` file written by ``train.py`` (``AttAttrClassifier``).
        output_dir: the directory to write (created if missing).
    """
    from lightning_attattr.lightning.checkpoints import export_checkpoint

    out = export_checkpoint(checkpoint, output_dir)
    print(f"exported {checkpoint} -> {out} ({', '.join(sorted(p.name for p in Path(out).iterdir()))})")


def main(args: list[str] | None = None) -> None:
    """Command-line entry point (``python -m lightning_attattr.export CKPT OUT_DIR``)."""
    from jsonargparse import auto_cli

    exit_on_user_error(auto_cli, export, args=args, prog="lightning_attattr.export")


if __name__ == "__main__":
    main()
