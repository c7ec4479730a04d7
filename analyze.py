"""Analyse a trained model offline: the paper's experiments, with results folders that resume.

Examples:
    python analyze.py heads --config runs/quickstart/version_0/config.yaml \
        --ckpt_path runs/quickstart/version_0/checkpoints/last.ckpt --output_dir results/quickstart-heads
    python analyze.py attribute --config ... --ckpt_path ... --text "a gripping, funny film"
    python analyze.py effectiveness --config ... --ckpt_path ... --output_dir results/effectiveness
    python analyze.py universality --results results/sst2-heads results/cola-heads --output_dir results/universality
    python analyze.py heads --help
"""

from lightning_attattr.analysis_cli import cli_main

if __name__ == "__main__":
    cli_main()
