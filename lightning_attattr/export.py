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
    out = export_checkpoint(checkpoint, output_dir)
    print(f"exported {checkpoint} -> {out} ({', '.join(sorted(p.name for p in Path(out).iterdir()))})")


def export_checkpoint(checkpoint_path: str | Path, output_dir: str | Path) -> Path:
    """Write a checkpoint's model (and tokenizer, when stored) as a Hugging Face directory.

    The directory loads with ``from_pretrained_pruned`` (or plain ``from_pretrained`` when no head
    was pruned) and ``AutoTokenizer.from_pretrained``; nothing is downloaded.

    Args:
        checkpoint_path: a ``.ckpt`` written by ``AttAttrClassifier``.
        output_dir: target directory (created; existing files of the same names are replaced).

    Returns:
        The output directory.

    Raises:
        PathNotFoundError, CheckpointError: see :func:`~lightning_attattr.lightning.checkpoints.read_checkpoint`.
    """
    from lightning_attattr.lightning.checkpoints import write_files
    from lightning_attattr.lightning.classifier import AttAttrClassifier

    module = AttAttrClassifier.load_from_checkpoint(checkpoint_path, map_location="cpu")  # checks the file
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    module.model.save_pretrained(out)
    if module.stored_tokenizer_files:
        write_files(module.stored_tokenizer_files, out)
    return out


def main(args: list[str] | None = None) -> None:
    """Command-line entry point (``python -m lightning_attattr.export CKPT OUT_DIR``)."""
    from jsonargparse import auto_cli

    exit_on_user_error(auto_cli, export, args=args, prog="lightning_attattr.export")


if __name__ == "__main__":
    main()
