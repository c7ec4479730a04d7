"""The configs shipped with the package, addressable by name: ``attattr-train fit --config quickstart``.

The files are the repository's top-level ``configs/*.yaml``; ``pyproject.toml`` maps that folder onto
the package ``lightning_attattr.configs``, so a wheel installs them as ``lightning_attattr/configs/`` and
an editable install reads them where they are.

A ``--config`` value is looked up in this order: an existing file always wins; else a bare name
(``quickstart`` or ``quickstart.yaml``) is a shipped config; anything else is a user error that lists
the shipped names. Paths *inside* a config (``save_dir: runs``) stay relative to the working directory.
``python -m lightning_attattr configs`` prints the names and paths.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_attattr.core.checks import PathNotFoundError

__all__ = ["CONFIG_OPTIONS", "configs_dir", "resolve_config", "resolve_config_args", "shipped_configs"]

#: The options whose value is a config file (LightningCLI's ``--config`` and its short form).
CONFIG_OPTIONS = ("--config", "-c")
_SUFFIXES = (".yaml", ".yml")


def configs_dir() -> Path:
    """The folder of the shipped configs: the package ``lightning_attattr.configs`` (wheel or editable install).

    A source tree used without installing (``PYTHONPATH=.``) has no such package; its ``configs/`` is used then.

    Raises:
        FileNotFoundError: no folder with shipped configs (a broken installation).
    """
    candidates = [Path(__file__).resolve().parent.parent / "configs"]
    try:
        candidates.insert(0, Path(str(importlib.resources.files("lightning_attattr.configs"))))
    except ModuleNotFoundError:
        pass
    for candidate in candidates:
        if candidate.is_dir() and any(candidate.glob("*.yaml")):
            return candidate
    raise FileNotFoundError(
        f"The shipped configs are missing: none of {[str(c) for c in candidates]} holds *.yaml files "
        "(reinstall lightning-attattr)."
    )


def shipped_configs() -> dict[str, Path]:
    """The shipped configs by name (file name without ``.yaml``), sorted by name."""
    return {path.stem: path for path in sorted(configs_dir().glob("*.yaml"))}


def _is_inline(text: str) -> bool:
    """Whether a ``--config`` value is a config itself (YAML/JSON text or a URL), not a file reference."""
    stripped = text.strip()
    return "\n" in text or stripped.startswith(("{", "[")) or ": " in stripped or "://" in stripped


def resolve_config(value: str, option: str = "--config") -> str:
    """The config file ``value`` stands for: an existing path as given, else a shipped config's path.

    Args:
        value: what the user passed to ``option``: a path, a shipped name (``quickstart`` or
            ``quickstart.yaml``), or inline YAML/JSON (returned unchanged).
        option: the option's name, for the error message.

    Returns:
        ``value`` itself when it is an existing path or inline config, else the shipped file's path.

    Raises:
        PathNotFoundError: ``value`` is neither an existing file nor a shipped name.
    """
    if _is_inline(value) or Path(value).expanduser().exists():
        return value
    shipped = shipped_configs()
    path = Path(value)
    name = path.name[: -len(path.suffix)] if path.suffix in _SUFFIXES else path.name
    bare = not any(sep in value for sep in ("/", "\\")) and path.suffix in ("", *_SUFFIXES)
    if bare and name in shipped:
        return str(shipped[name])
    hint = f" (the shipped one is `{option} {name}`)" if name in shipped else ""
    raise PathNotFoundError(
        f"Expected `{option}` to be an existing config file or the name of a shipped config "
        f"({', '.join(shipped)}; `python -m lightning_attattr configs` prints their paths), but {value!r} is neither"
        f"{hint}."
    )


def resolve_config_args(args: Sequence[Any]) -> list[Any]:
    """``args`` with every ``--config``/``-c`` value passed through :func:`resolve_config`.

    Both ``--config VALUE`` and ``--config=VALUE`` are handled; other arguments (also ``Path``
    objects) are returned unchanged.

    Raises:
        PathNotFoundError: a ``--config`` value is neither an existing file nor a shipped name.
    """
    out = list(args)
    for k, arg in enumerate(out):
        if not isinstance(arg, str):
            continue
        option, sep, value = arg.partition("=")
        if option not in CONFIG_OPTIONS:
            continue
        if sep:
            out[k] = f"{option}={resolve_config(value, option)}"
        elif k + 1 < len(out) and isinstance(out[k + 1], str) and not out[k + 1].startswith("-"):
            out[k + 1] = resolve_config(out[k + 1], option)
    return out
