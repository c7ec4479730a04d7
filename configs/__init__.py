"""The shipped configs: installed as the package data folder ``lightning_attattr/configs`` (see pyproject.toml)."""
