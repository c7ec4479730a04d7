"""What `pip install lightning-attattr` gives: the root API (lazy), the commands, the shipped configs, the metadata."""

import importlib
import importlib.resources
import os
import shutil
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version

import lightning_attattr
from lightning_attattr.shipped_configs import configs_dir, resolve_config, resolve_config_args, shipped_configs

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
SHIPPED = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
ROOT_API = [
    "AttentionIntegratedGradients",
    "attention_scope",
    "AttributionMonitor",
    "HeadImportanceCallback",
    "HeadPruningCallback",
    "AttAttrClassifier",
    "EpochCheckpoint",
    "GlueDataModule",
    "SyntheticDataModule",
]


def python(*args: str, cwd: Path = ROOT, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ATTATTR_TRACEBACK"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "error:" in line]


# ------------------------------------------------------------------------------ root API
def test_root_api_imports_the_main_classes():
    from lightning_attattr import (  # noqa: F401
        AttAttrClassifier,
        AttentionIntegratedGradients,
        AttributionMonitor,
        EpochCheckpoint,
        GlueDataModule,
        HeadImportanceCallback,
        HeadPruningCallback,
        SyntheticDataModule,
        __version__,
        attention_scope,
    )
    from lightning_attattr.callbacks import AttributionMonitor as Monitor
    from lightning_attattr.core.attribution import AttentionIntegratedGradients as AIG

    assert AttentionIntegratedGradients is AIG and AttributionMonitor is Monitor
    assert set(ROOT_API) <= set(lightning_attattr.__all__)
    assert sorted(lightning_attattr.__all__) == sorted(["__version__", *lightning_attattr._LAZY])
    for name in lightning_attattr.__all__:
        assert getattr(lightning_attattr, name) is not None
        assert name in dir(lightning_attattr)
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        lightning_attattr.nope  # noqa: B018


def test_importing_the_package_and_the_core_api_does_not_import_lightning():
    code = (
        "import sys, lightning_attattr; "
        "assert 'torch' not in sys.modules, 'import lightning_attattr imported torch'; "
        "from lightning_attattr import AttentionIntegratedGradients, AttributionResult, attention_scope, HeadId; "
        "from lightning_attattr import prune_heads; "
        "import lightning_attattr.core, lightning_attattr.core.attribution, lightning_attattr.core.adapter; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('lightning', 'pytorch_lightning')]; "
        "assert not bad, bad; "
        "from lightning_attattr import HeadPruningCallback; assert 'lightning_attattr.callbacks' in sys.modules"
    )
    done = python("-c", code)
    assert done.returncode == 0, done.stderr


# ------------------------------------------------------------------------------ shipped configs
def test_shipped_configs_are_the_configs_folder():
    assert list(shipped_configs()) == SHIPPED and "quickstart" in SHIPPED
    assert configs_dir().resolve() == (ROOT / "configs").resolve()  # the editable install reads them in place
    package = importlib.resources.files("lightning_attattr.configs")  # the package the wheel installs them as
    assert sorted(p.name[:-5] for p in package.iterdir() if p.name.endswith(".yaml")) == SHIPPED


@pytest.mark.parametrize("value", ["quickstart", "quickstart.yaml"])
def test_a_name_resolves_to_the_shipped_config(value, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    expected = str(ROOT / "configs" / "quickstart.yaml")
    assert Path(resolve_config(value)).resolve() == Path(expected).resolve()
    resolved = resolve_config_args(["fit", "--config", value, f"--config={value}", "-c", value, Path(value)])
    assert [Path(a).resolve() for a in (resolved[2], resolved[3].partition("=")[2], resolved[5])] == [
        Path(expected).resolve()
    ] * 3
    assert resolved[3].startswith("--config=") and resolved[6] == Path(value)  # not an option value: unchanged


def test_an_existing_path_wins_and_inline_configs_pass(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "quickstart").write_text("seed_everything: 1\n", encoding="utf-8")
    assert resolve_config("quickstart") == "quickstart"
    inline = '{"trainer": {"max_epochs": 1}}'
    assert resolve_config_args(["--config", inline, "--config", "seed_everything: 3"]) == [
        "--config",
        inline,
        "--config",
        "seed_everything: 3",
    ]


@pytest.mark.parametrize("value", ["quikstart", "configs/quickstart.yaml", "my_run.yaml"])
def test_an_unknown_name_is_one_error_listing_the_shipped_names(value, tmp_path, monkeypatch):
    from lightning_attattr.core.checks import PathNotFoundError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(PathNotFoundError) as info:
        resolve_config(value)
    message = str(info.value)
    assert f"but {value!r} is neither" in message and ", ".join(SHIPPED) in message
    assert ("`--config quickstart`" in message) == ("quickstart" in value)  # a hint when only the folder is wrong


def test_train_cli_takes_a_config_name(tmp_path, monkeypatch, capsys):
    from lightning_attattr.cli import cli_main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        cli_main(["fit", "--config", "quickstart", "--print_config"])
    assert info.value.code == 0
    parsed = yaml.safe_load(capsys.readouterr().out)
    assert parsed["trainer"]["logger"]["init_args"]["name"] == "quickstart"
    assert parsed["trainer"]["logger"]["init_args"]["save_dir"] == "runs"  # relative to the working directory
    with pytest.raises(SystemExit) as info:
        cli_main(["fit", "--config", "quikstart"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(error_lines(err)) == 1, err
    assert error_lines(err)[0].startswith("train.py: error: Expected `--config` to be an existing config file")
    assert ", ".join(SHIPPED) in err
    assert sorted(tmp_path.iterdir()) == []


def test_analysis_cli_takes_a_config_name(tmp_path, monkeypatch, capsys):
    from lightning_attattr.analysis_cli import cli_main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        cli_main(["attribute", "--config=quickstart.yaml", "--print_config"])
    assert info.value.code == 0
    assert yaml.safe_load(capsys.readouterr().out)["data"]["class_path"].endswith("SyntheticDataModule")
    with pytest.raises(SystemExit) as info:
        cli_main(["heads", "--config", "nope"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and error_lines(err)[0].startswith("analyze.py: error: Expected `--config`")


# ------------------------------------------------------------------------------ the commands
def test_python_m_lightning_attattr_lists_the_commands_and_configs(tmp_path):
    done = python("-m", "lightning_attattr", "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m lightning_attattr COMMAND")
    for command in ("train", "analyze", "configs", "attattr-train", "attattr-analyze"):
        assert f"  {command} " in done.stdout or f"installed as {command}" in done.stdout, command
    done = python("-m", "lightning_attattr", "configs", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    listed = {line.split()[0]: Path(line.split()[1]) for line in done.stdout.splitlines()[1:]}
    assert sorted(listed) == SHIPPED and all(path.is_file() for path in listed.values())
    done = python("-m", "lightning_attattr", "configs", "quickstart", cwd=tmp_path)
    assert Path(done.stdout.strip()) == listed["quickstart"]
    done = python("-m", "lightning_attattr", "bogus", cwd=tmp_path)
    assert done.returncode == 2 and "error: unknown command 'bogus'" in done.stderr


def test_python_m_lightning_attattr_forwards_to_the_clis(capsys):
    from lightning_attattr.__main__ import main

    with pytest.raises(SystemExit) as info:
        main(["train", "fit", "--config", "nope"])
    assert info.value.code == 2
    assert error_lines(capsys.readouterr().err)[0].startswith("python -m lightning_attattr train: error: ")
    assert main(["analyze"]) == 0
    assert capsys.readouterr().out.startswith("usage: python -m lightning_attattr analyze SUBCOMMAND")


def test_python_m_cli_prints_its_help_and_names_itself_in_errors(tmp_path):
    done = python("-m", "lightning_attattr.cli", "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m lightning_attattr.cli")
    assert "{fit,validate,test,predict}" in done.stdout
    done = python("-m", "lightning_attattr.analysis_cli", "attribute", "--config", "nope", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    line = error_lines(done.stderr)[0]
    assert line.startswith("python -m lightning_attattr.analysis_cli: error: Expected `--config`")
    assert sorted(tmp_path.iterdir()) == []


def test_console_scripts_are_installed_and_name_themselves(tmp_path):
    entry_points = PYPROJECT["project"]["scripts"]
    assert entry_points == {
        "attattr-train": "lightning_attattr.cli:main",
        "attattr-analyze": "lightning_attattr.analysis_cli:main",
    }
    for target in entry_points.values():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function))
    script = shutil.which("attattr-train", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("attattr-train is not installed next to this Python (an install older than the entry points)")
    env = {k: v for k, v in os.environ.items() if k != "ATTATTR_TRACEBACK"}
    done = subprocess.run(
        [script, "fit", "--config", "nope"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2 and error_lines(done.stderr)[0].startswith("attattr-train: error: "), done.stderr


# ------------------------------------------------------------------------------ metadata
def test_version_has_one_home_read_statically():
    from setuptools.config.expand import StaticModule

    assert "version" not in PYPROJECT["project"] and "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "lightning_attattr.__version__"}
    spec = importlib.util.spec_from_file_location("lightning_attattr", ROOT / "lightning_attattr" / "__init__.py")
    assert StaticModule("lightning_attattr", spec).__version__ == lightning_attattr.__version__  # no import needed
    Version(lightning_attattr.__version__)  # a valid PEP 440 version


def test_every_subpackage_is_packaged_with_the_configs():
    setuptools_config = PYPROJECT["tool"]["setuptools"]
    found = sorted(
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "lightning_attattr").rglob("__init__.py")
        if "__pycache__" not in p.parts
    )
    assert sorted(setuptools_config["packages"]) == sorted([*found, "lightning_attattr.configs"])
    assert setuptools_config["package-dir"] == {"lightning_attattr.configs": "configs"}
    assert setuptools_config["package-data"]["lightning_attattr.configs"] == ["*.yaml"]


def test_license_is_the_apache_2_text():
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text and "END OF TERMS AND CONDITIONS" in text
    assert PYPROJECT["project"]["license"] == "Apache-2.0" and PYPROJECT["project"]["license-files"] == ["LICENSE"]


def test_installed_dependencies_satisfy_pyproject():
    requirements = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    jsonargparse = next(r for r in requirements if r.name == "jsonargparse")
    assert "signatures" in jsonargparse.extras and not jsonargparse.specifier.contains("5.0.0")
    for requirement in requirements:
        try:
            installed = version(requirement.name)
        except PackageNotFoundError:
            pytest.fail(f"{requirement.name} is a dependency but not installed")
        assert requirement.specifier.contains(installed, prereleases=True), (requirement, installed)


def test_wheel_holds_the_configs_license_and_entry_points(tmp_path):
    """Build the wheel from a copy of the sources (no build isolation: setuptools of this environment)."""
    import zipfile

    pytest.importorskip("setuptools")
    src, dist = tmp_path / "src", tmp_path / "dist"
    for folder in ("lightning_attattr", "configs"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    done = python(
        "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(src), "-w", str(dist), cwd=tmp_path
    )
    if done.returncode != 0:
        pytest.fail(done.stdout + done.stderr)
    (wheel,) = dist.glob("lightning_attattr-*.whl")
    assert wheel.name.startswith(f"lightning_attattr-{lightning_attattr.__version__}-")
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"lightning_attattr/configs/{n}.yaml" for n in SHIPPED} <= set(names)
    assert {f"lightning_attattr/{n}" for n in ("__main__.py", "py.typed", "report/report.js")} <= set(names)
    info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    assert f"{info}/licenses/LICENSE" in names
    entry_points = zipfile.ZipFile(wheel).read(f"{info}/entry_points.txt").decode()
    assert "attattr-train = lightning_attattr.cli:main" in entry_points
    assert "attattr-analyze = lightning_attattr.analysis_cli:main" in entry_points


def test_our_cli_code_triggers_no_jsonargparse_deprecation(monkeypatch, tmp_path, capsys):
    """Every v5 deprecation jsonargparse reports comes from Lightning's cli.py, none from this package."""
    import warnings

    from lightning_attattr.analysis_cli import cli_main as analysis_main
    from lightning_attattr.cli import cli_main

    monkeypatch.setenv("JSONARGPARSE_DEPRECATION_WARNINGS", "all")
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cli_main(["--config", "quickstart", "--trainer.logger", "false", "--data.n_train", "64"], run=False)
        for args in (["heads", "--help"], ["report", "--help"], ["universality", "--help"]):
            with pytest.raises(SystemExit):
                analysis_main(args)
    capsys.readouterr()
    deprecations = [w for w in caught if w.category.__name__ == "JsonargparseDeprecationWarning"]
    ours = [f"{w.filename}:{w.lineno}: {w.message}" for w in deprecations if "lightning_attattr" in w.filename]
    assert not ours, ours
