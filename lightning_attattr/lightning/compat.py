"""Both Lightning packages: ``lightning.pytorch`` (the ``lightning`` package) and ``pytorch_lightning``.

The two packages ship the same code under two names, and a Trainer of one refuses the
LightningModules, DataModules and callbacks of the other. The project supports both this way:

- **Callbacks** (what users plug into their own Trainer: :class:`AttributionMonitor`,
  :class:`HeadImportanceCallback`, :class:`HeadPruningCallback`, :class:`EpochSummary`,
  :class:`EpochCheckpoint`) derive from the ``Callback`` (or ``ModelCheckpoint``) class of *every*
  installed package (through :data:`DualCallback` / :data:`DualModelCheckpoint`, see :func:`dual_base`),
  so one class works in either Trainer, whatever the user imported.
- **LightningModules, DataModules and the two CLIs** are built on one package per process,
  :data:`pl`, chosen once when this module is first imported:

  1. the environment variable ``ATTATTR_LIGHTNING`` (``lightning`` or ``pytorch_lightning``);
  2. else the package the program had already imported (``import lightning.pytorch as pl`` before
     ``import lightning_attattr``...);
  3. else ``pytorch_lightning`` when it is installed (the package this project depends on),
     else ``lightning.pytorch``.

  A module class cannot derive from both packages' ``LightningModule``: each Trainer checks which of
  its hooks a module overrides, and a class with two such bases appears to override all of them.
- **Loggers** are recognised by class in every package the program has imported
  (:func:`logger_classes`), so a ``lightning.pytorch`` TensorBoard logger is one as much as a
  ``pytorch_lightning`` one.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Literal, overload

#: The environment variable that picks the package of the LightningModules, DataModules and CLIs.
ENV_VAR = "ATTATTR_LIGHTNING"
#: Accepted values of :data:`ENV_VAR` -> importable module name.
PACKAGES: dict[str, str] = {"pytorch_lightning": "pytorch_lightning", "lightning": "lightning.pytorch"}


def _installed(module: str) -> bool:
    top = module.split(".")[0]
    try:
        return importlib.util.find_spec(top) is not None and importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _choose() -> str:
    """The module name of the package :data:`pl` is taken from (see the module docstring)."""
    wanted = os.environ.get(ENV_VAR, "").strip()
    if wanted:
        if wanted not in PACKAGES:
            raise ValueError(f"Expected `{ENV_VAR}` to be one of {sorted(PACKAGES)}, but got {wanted!r}.")
        if not _installed(PACKAGES[wanted]):
            raise ModuleNotFoundError(f"`{ENV_VAR}={wanted}` asks for {PACKAGES[wanted]!r}, which is not installed.")
        return PACKAGES[wanted]
    imported = [name for name in PACKAGES.values() if name in sys.modules]
    if len(imported) == 1:
        return imported[0]
    installed = [name for name in PACKAGES.values() if _installed(name)]
    if not installed:
        raise ModuleNotFoundError("Neither `pytorch_lightning` nor `lightning` is installed: pip install lightning")
    return installed[0]


def available() -> list[ModuleType]:
    """Every installed Lightning package (imported), ``pytorch_lightning`` first."""
    return [importlib.import_module(name) for name in PACKAGES.values() if _installed(name)]


if TYPE_CHECKING:
    # The two packages ship the same code, so checking types against one of them is right for both;
    # at run time the package is the one `_choose` picks.
    import pytorch_lightning as pl
    from pytorch_lightning.loggers import MLFlowLogger, TensorBoardLogger, WandbLogger
else:
    #: The Lightning package of this process's LightningModules, DataModules and CLIs.
    pl = importlib.import_module(_choose())
#: ``"pytorch_lightning"`` or ``"lightning.pytorch"``.
PACKAGE: str = pl.__name__


def dual_base(path: str) -> tuple[type, ...]:
    """The class ``path`` (e.g. ``"callbacks.Callback"``) of every installed package, as bases of one class.

    Only for callbacks: their Trainers call their hooks by name and check only ``state_dict`` for
    overriding, so a callback deriving from both packages' classes works in either Trainer.
    """
    bases: list[type] = []
    for package in available():
        found: object = package
        for name in path.split("."):
            found = getattr(found, name)
        assert isinstance(found, type)
        bases.append(found)
    return tuple(bases)


class _DualBase:
    """A stand-in base class that becomes :func:`dual_base` of ``path`` when a class derives from it.

    ``class EpochSummary(DualCallback)`` gets the ``Callback`` class of every installed package as
    its bases (``__mro_entries__``, PEP 560), exactly as ``class EpochSummary(*dual_base(...))``
    would; the bases are looked up when the class is created, not when this module is imported.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def __mro_entries__(self, bases: tuple[object, ...]) -> tuple[type, ...]:
        return dual_base(self.path)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"


if TYPE_CHECKING:
    # a type checker sees one package's classes (the same code as the other's, see `pl` above)
    from pytorch_lightning.callbacks import Callback as DualCallback
    from pytorch_lightning.callbacks import ModelCheckpoint as DualModelCheckpoint
else:
    #: Base of callbacks that work in a Trainer of either package: ``Callback`` of every installed package.
    DualCallback = _DualBase("callbacks.Callback")
    #: Base of checkpoint callbacks for either package: ``ModelCheckpoint`` of every installed package.
    DualModelCheckpoint = _DualBase("callbacks.ModelCheckpoint")


@overload
def logger_classes(name: Literal["TensorBoardLogger"]) -> tuple[type[TensorBoardLogger], ...]: ...
@overload
def logger_classes(name: Literal["WandbLogger"]) -> tuple[type[WandbLogger], ...]: ...
@overload
def logger_classes(name: Literal["MLFlowLogger"]) -> tuple[type[MLFlowLogger], ...]: ...
@overload
def logger_classes(name: str) -> tuple[type, ...]: ...
def logger_classes(name: str) -> tuple[type, ...]:
    """The logger class ``name`` (e.g. ``"TensorBoardLogger"``) of every Lightning package imported so far.

    A logger instance comes from a package the program has imported, so packages it has not
    imported are not imported here (a logger whose own client library is missing is skipped).
    """
    found: list[type] = []
    for package in PACKAGES.values():
        if package not in sys.modules:
            continue
        try:
            loggers = importlib.import_module(f"{package}.loggers")
            cls = getattr(loggers, name, None)
        except ImportError:
            cls = None
        if isinstance(cls, type):
            found.append(cls)
    return tuple(found)


def to_this_package(text: str) -> str:
    """``text`` with the other Lightning package's module paths (``pytorch_lightning.loggers...``) moved to ``pl``'s."""
    other = next(name for name in PACKAGES.values() if name != PACKAGE)
    return re.sub(rf"(?<![\w.]){re.escape(other)}\.", f"{PACKAGE}.", text)


def trainer_callbacks(trainer: pl.Trainer) -> list[pl.Callback]:
    """``trainer.callbacks``, the trainer's own list (appending to it or removing from it changes the trainer)."""
    # Lightning's _CallbackConnector assigns the attribute; the Trainer class does not declare it
    return trainer.callbacks  # type: ignore[attr-defined]


def is_fast_dev_run(trainer: pl.Trainer) -> bool:
    """Whether ``trainer`` makes a ``fast_dev_run`` debug run (``fast_dev_run=True`` or a number of batches)."""
    # Lightning's _init_debugging_flags assigns the attribute; the Trainer class does not declare it
    return bool(trainer.fast_dev_run)  # type: ignore[attr-defined]


# Rank-zero helpers of the chosen package (both packages share the rank they read).
rank_zero_info = pl.utilities.rank_zero_info
rank_zero_warn = pl.utilities.rank_zero_warn
rank_zero_only = pl.utilities.rank_zero_only
