"""The analysis options are defined once (analysis/settings.py) and every subcommand is built from them."""

import dataclasses
import inspect

import pytest

from lightning_attattr.analysis.settings import (
    AnalysisSettings,
    AttackSettings,
    AttributeSettings,
    FaithfulnessSettings,
    HeadsSettings,
    Integration,
    TreeSettings,
)
from lightning_attattr.analysis_cli import _NOT_DECIDING, SETTINGS, AnalysisTrainer
from lightning_attattr.core.checks import ArgumentError
from lightning_attattr.core.reductions import Rows, TopK

RUN_OPTIONS = ["model", "datamodule", "ckpt_path", "weights_only", "output_dir", "overwrite"]


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_subcommand_signature_is_run_options_then_its_settings(name):
    settings = SETTINGS[name]
    method = getattr(AnalysisTrainer, name)
    params = list(inspect.signature(method).parameters.values())[1:]  # without self
    own = [f.name for f in settings.options()]
    assert [p.name for p in params] == RUN_OPTIONS + own
    assert own[-4:] == ["n_steps", "method", "completeness_tol", "batch_size"]  # the shared tail, once
    defaults = settings.from_options({p.name: p.default for p in params[len(RUN_OPTIONS) :]})
    assert defaults == settings()  # the signature's defaults are the dataclass defaults
    for p in params[len(RUN_OPTIONS) :]:
        assert p.kind is inspect.Parameter.KEYWORD_ONLY
    doc = method.__doc__
    for option in RUN_OPTIONS + own:
        assert f"\n    {option}: " in doc, f"{name}: no help for {option}"
    assert method.settings is settings


def test_not_deciding_options_are_the_batch_sizes_plots_and_timing():
    assert set(_NOT_DECIDING) == {
        "batch_size",
        "eval_batch_size",
        "latency_batches",
        "latency_repeats",
        "plots",
        "report",
        "structural",
    }


def test_decisive_is_flat_and_leaves_out_what_does_not_change_results():
    settings = HeadsSettings(integration=Integration(n_steps=4, method="riemann_left"), batch_size=3, structural=True)
    decisive = settings.decisive(transfer_from={"rte": [[0.5]]})
    assert decisive["n_steps"] == 4 and decisive["method"] == "riemann_left" and decisive["completeness_tol"] == 1e-3
    assert "batch_size" not in decisive and "structural" not in decisive and "integration" not in decisive
    assert decisive["transfer_from"] == {"rte": [[0.5]]}  # derived values replace the option as given
    assert decisive["fractions"] == list(HeadsSettings().fractions)


def test_settings_check_when_built_with_one_line_errors():
    with pytest.raises(ArgumentError, match="`fractions` increasing from 0"):
        HeadsSettings(fractions=[0.5, 0.2])
    with pytest.raises(ArgumentError, match="`batch_size`"):
        TreeSettings(batch_size=0)
    with pytest.raises(ArgumentError, match="`n_steps`"):
        Integration(n_steps=0)
    with pytest.raises(ArgumentError, match="`completeness_tol`"):
        AttackSettings.from_options({"n_steps": "auto", "method": "gausslegendre", "completeness_tol": 0.0})
    with pytest.raises(ArgumentError, match="`mode`"):
        TreeSettings(mode="forest")


def test_settings_normalize_what_the_run_uses():
    settings = FaithfulnessSettings(edge_methods=["attention", "attattr", "attention"], ks=[2, 1])
    assert settings.edge_methods == ["attention", "attattr"]
    assert settings.decisive()["edge_methods"] == ["attention", "attattr"]


def test_every_settings_field_has_help_and_every_option_is_shared_or_own_once():
    for settings in SETTINGS.values():
        names = [f.name for f in settings.options()]
        assert len(names) == len(set(names))
        for f in settings.options():
            assert f.metadata["doc"].strip(), f"{settings.__name__}.{f.name} has no help"
        assert issubclass(settings, AnalysisSettings)
    assert [f.name for f in dataclasses.fields(Integration)] == ["n_steps", "method", "completeness_tol"]


def test_subcommand_from_python_binds_like_a_function():
    trainer = AnalysisTrainer.__new__(AnalysisTrainer)  # the signature is checked before any work
    with pytest.raises(TypeError, match="unexpected keyword argument 'n_step'"):
        trainer.heads(object(), n_step=4)
    with pytest.raises(TypeError):
        trainer.heads(object(), None, None, True, "out", False, ["attattr"])  # own options are keyword-only
    with pytest.raises(ArgumentError, match="`methods`"):
        trainer.heads(object(), methods=["nope"])


@pytest.mark.parametrize(
    ("rows", "top_k", "match"),
    [
        (
            [1, 1],
            None,
            r"^Expected `rows` to be None or a list of distinct int query positions .*, but got \[1, 1\]\.$",
        ),
        (["-1"], None, r"^Expected `rows` .*, but got \['-1'\]\.$"),
        (None, 1.5, r"^Expected `top_k` to be None or a positive integer, but got 1\.5\.$"),
        ([0], 3, r"^Expected at most one of `rows` and `top_k`, but got rows=\[0\] and top_k=3\.$"),
    ],
)
def test_rows_and_top_k_are_checked_in_one_place_for_the_subcommand_and_the_callback(rows, top_k, match):
    from lightning_attattr.callbacks import AttributionMonitor

    for build in (AttributeSettings, AttributionMonitor):
        with pytest.raises(ArgumentError, match=match):
            build(rows=rows, top_k=top_k)


def test_rows_and_top_k_become_the_reduction_and_decide_the_results():
    assert AttributeSettings().reduction() is None
    assert AttributeSettings(rows=[-1, 0]).reduction() == Rows([-1, 0])
    assert AttributeSettings(top_k=7).reduction() == TopK(7)
    assert AttributeSettings(top_k=7).decisive()["top_k"] == 7  # another top_k is another results folder
