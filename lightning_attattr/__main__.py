"""``python -m lightning_attattr``: the package's commands in one place.

``train ...`` and ``analyze ...`` are the two command lines (also installed as ``attattr-train`` and
``attattr-analyze``, the same as ``train.py`` and ``analyze.py`` in a checkout); ``configs`` lists the
shipped configs that ``--config NAME`` accepts.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from lightning_attattr import __version__

_HELP = """usage: {prog} COMMAND [options]

Self-Attention Attribution (Hao et al., AAAI 2021) on Hugging Face models with Lightning, version {version}.

commands:
  train     fine-tune a model with LightningCLI (installed as attattr-train)
  analyze   the paper's experiments on a trained model (installed as attattr-analyze)
  configs   list the shipped configs and their paths (configs NAME: the path of that one)

examples:
  {prog} train fit --config quickstart
  {prog} analyze heads --config runs/quickstart/version_0/config.yaml \\
      --ckpt_path runs/quickstart/version_0/checkpoints/last.ckpt --output_dir results/heads
  {prog} train --help     (every option of a command; analyze --help lists its subcommands)

--config NAME takes a shipped config in both commands (an existing file of that name wins).

options:
  -h, --help  show this message and exit
  --version   print the version and exit
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command of ``python -m lightning_attattr``; returns the exit status.

    Args:
        argv: the arguments after ``python -m lightning_attattr`` (default ``sys.argv[1:]``).
    """
    from lightning_attattr.core.checks import program_name

    args = list(sys.argv[1:] if argv is None else argv)
    prog = program_name("python -m lightning_attattr") if argv is None else "python -m lightning_attattr"
    command, rest = (args[0], args[1:]) if args else (None, [])
    if command in (None, "-h", "--help"):
        print(_HELP.format(prog=prog, version=__version__), end="")
        return 0
    if command == "--version":
        print(__version__)
        return 0
    if command == "train":
        from lightning_attattr.cli import cli_main

        cli_main(rest, prog=f"{prog} train")
        return 0
    if command == "analyze":
        from lightning_attattr.analysis_cli import cli_main as analysis_main

        analysis_main(rest, prog=f"{prog} analyze")
        return 0
    if command == "configs":
        return _configs(rest, prog)
    print(
        f"{prog}: error: unknown command {command!r} (commands: train, analyze, configs; see {prog} --help)",
        file=sys.stderr,
    )
    return 2


def _configs(args: list[str], prog: str) -> int:
    """Print the shipped configs (name and path), or the path of the one named."""
    from lightning_attattr.core.checks import exit_on_user_error
    from lightning_attattr.shipped_configs import resolve_config, shipped_configs

    usage = f"usage: {prog} configs [NAME]"
    if any(a in ("-h", "--help") for a in args):
        print(f"{usage}\n\nThe shipped configs and their paths; with NAME, only the path of that one.")
        return 0
    if len(args) > 1:
        print(f"{usage}\n{prog} configs: error: expected at most one NAME, but got {len(args)}.", file=sys.stderr)
        return 2
    if args:
        print(exit_on_user_error(resolve_config, args[0], "NAME", prog=f"{prog} configs"))
        return 0
    configs = shipped_configs()
    width = max(map(len, configs))
    print(f"shipped configs (--config NAME in `{prog} train` and `{prog} analyze`):")
    for name, path in configs.items():
        print(f"  {name:<{width}}  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
