"""The analysis subcommands' signatures, built from their settings (one home for every shared option).

An ``analyze.py`` subcommand is an :class:`~lightning_attattr.analysis_cli.AnalysisTrainer` method
(LightningCLI reads its signature and docstring for ``--help``, ``--print_config`` and configs). Its
options are, in order:

1. the model, data module and checkpoint it analyses (:class:`Run`: ``model``, ``datamodule``,
   ``ckpt_path``, ``weights_only``) and the results folder (``output_dir``, ``overwrite``);
2. the subcommand's own options, then the integration of AttAttr and the batch size: the fields of
   its :class:`~lightning_attattr.analysis.settings.AnalysisSettings` subclass.

:func:`subcommand` writes that signature and the ``Args:`` section of the docstring once for all
subcommands; the method body receives a :class:`Run` and the checked settings object::

    @subcommand(HeadsSettings, output_dir="results/heads", outputs="``importance.json/csv``, ...")
    def heads(self, run: Run, settings: HeadsSettings) -> dict[str, Any]:
        \"\"\"Head importance by every method ...\"\"\"
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import textwrap
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from lightning_attattr.analysis.settings import AnalysisSettings
from lightning_attattr.core.checks import check_bool
from lightning_attattr.lightning.checkpoints import WEIGHTS_ONLY_HELP
from lightning_attattr.lightning.compat import pl

S = TypeVar("S", bound=AnalysisSettings)


@dataclass(frozen=True)
class Run:
    """What one analysis reads and where it writes: model, data module, checkpoint, results folder."""

    model: pl.LightningModule
    datamodule: pl.LightningDataModule | None
    ckpt_path: str | None
    weights_only: bool
    output_dir: str
    overwrite: bool

    def __post_init__(self) -> None:
        check_bool("overwrite", self.overwrite)


_OVERWRITE = "replace a results folder that holds results of other arguments."


def _run_parameters(output_dir: str) -> list[inspect.Parameter]:
    keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD
    return [
        inspect.Parameter("model", keyword, annotation=pl.LightningModule),
        inspect.Parameter("datamodule", keyword, default=None, annotation=pl.LightningDataModule | None),
        inspect.Parameter("ckpt_path", keyword, default=None, annotation=str | None),
        inspect.Parameter("weights_only", keyword, default=True, annotation=bool),
        inspect.Parameter("output_dir", keyword, default=output_dir, annotation=str),
        inspect.Parameter("overwrite", keyword, default=False, annotation=bool),
    ]


def _settings_parameters(settings: type[AnalysisSettings]) -> list[inspect.Parameter]:
    from lightning_attattr.analysis.settings import Integration

    hints = {**typing.get_type_hints(Integration), **typing.get_type_hints(settings)}
    out = []
    for f in settings.options():
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=hints[f.name]))
    return out


def _args_section(settings: type[AnalysisSettings], data: str, outputs: str) -> str:
    docs = {
        "model": "the classifier (built from ``--config``/``--model``).",
        "datamodule": f"the data module ({data}).",
        "ckpt_path": "checkpoint whose weights are analysed (``None``: the model as built).",
        "weights_only": WEIGHTS_ONLY_HELP,
        "output_dir": f"results folder ({outputs}).",
        "overwrite": _OVERWRITE,
        **{f.name: f.metadata["doc"] for f in settings.options()},
    }
    lines = ["Args:"]
    for name, doc in docs.items():
        lines += textwrap.wrap(f"{name}: {doc}", width=108, initial_indent="    ", subsequent_indent="        ")
    return "\n".join(lines)


def subcommand(
    settings: type[S], *, output_dir: str, outputs: str, data: str = "dev set, tokenizer"
) -> Callable[[Callable[[Any, Run, S], dict[str, Any]]], Callable[..., dict[str, Any]]]:
    """Make ``body(self, run, settings)`` an analysis subcommand whose options are ``Run``'s and ``settings``' fields.

    Args:
        settings: the subcommand's settings class (its fields are its options).
        output_dir: the default results folder.
        outputs: what the results folder holds (the help of ``output_dir``).
        data: what the data module provides (the help of ``datamodule``).
    """

    def wrap(body: Callable[[Any, Run, S], dict[str, Any]]) -> Callable[..., dict[str, Any]]:
        self_parameter = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
        signature = inspect.Signature(
            [self_parameter, *_run_parameters(output_dir), *_settings_parameters(settings)],
            return_annotation=dict[str, Any],
        )
        run_names = [p.name for p in _run_parameters(output_dir)]

        @functools.wraps(body, assigned=("__module__", "__name__", "__qualname__"))
        def method(*args: Any, **kwargs: Any) -> dict[str, Any]:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            values = dict(bound.arguments)
            self = values.pop("self")
            run = Run(**{name: values.pop(name) for name in run_names})
            return body(self, run, typing.cast(S, settings.from_options(values)))

        method.__signature__ = signature  # type: ignore[attr-defined]  # read by inspect and jsonargparse
        method.__doc__ = f"{inspect.cleandoc(body.__doc__ or '')}\n\n{_args_section(settings, data, outputs)}\n"
        method.settings = settings  # type: ignore[attr-defined]  # the settings class, for readers of the method
        return method

    return wrap
