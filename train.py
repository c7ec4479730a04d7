"""Fine-tune a Hugging Face encoder with LightningCLI.

Examples:
    python train.py fit --config configs/quickstart.yaml           # offline, synthetic task, ~2 min
    python train.py fit --config configs/sst2.yaml --trainer.max_epochs 1
    python train.py fit --help
"""

from lightning_attattr.cli import cli_main

if __name__ == "__main__":
    cli_main()
