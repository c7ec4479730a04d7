"""lightning-attattr: Self-Attention Attribution (Hao et al., AAAI 2021) for transformers v5 and Lightning.

The main classes are importable from the package root::

    from lightning_attattr import AttentionIntegratedGradients, attention_scope        # the core (no Lightning)
    from lightning_attattr import Token, Tokens, Continuation, Contrast                # language-model targets
    from lightning_attattr import AttributionMonitor, HeadImportanceCallback, HeadPruningCallback  # callbacks
    from lightning_attattr import AttAttrClassifier, SyntheticDataModule               # module and data

They are loaded on first access (PEP 562), so ``import lightning_attattr`` stays cheap and importing
:mod:`lightning_attattr.core` never imports Lightning. The attribution core lives in
:mod:`lightning_attattr.core` and imports only ``torch``, ``numpy`` and (in its adapter) ``transformers``.
The command lines are ``attattr-train`` and ``attattr-analyze`` (``python -m lightning_attattr --help``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0.dev0"

# public name -> the module that defines it (imported on first access)
_LAZY: dict[str, str] = {
    # core: torch and transformers only
    "AttentionIntegratedGradients": "lightning_attattr.core.attribution",
    "AttributionResult": "lightning_attattr.core.attribution",
    "attention_scope": "lightning_attattr.core.adapter",
    "attention_layers": "lightning_attattr.core.families",
    "kv_group_head_mask": "lightning_attattr.core.adapter",
    "Token": "lightning_attattr.core.targets",
    "Tokens": "lightning_attattr.core.targets",
    "Continuation": "lightning_attattr.core.targets",
    "Contrast": "lightning_attattr.core.targets",
    "HeadId": "lightning_attattr.core.importance",
    "prune_heads": "lightning_attattr.core.pruning",
    # Lightning callbacks
    "AttributionMonitor": "lightning_attattr.callbacks",
    "HeadImportanceCallback": "lightning_attattr.callbacks",
    "HeadPruningCallback": "lightning_attattr.callbacks",
    "EpochCheckpoint": "lightning_attattr.callbacks",
    "EpochSummary": "lightning_attattr.callbacks",
    # LightningModule and data modules
    "AttAttrClassifier": "lightning_attattr.lightning.classifier",
    "GlueDataModule": "lightning_attattr.data.modules",
    "SyntheticDataModule": "lightning_attattr.data.modules",
}

# a literal list, for type checkers and linters (a test checks that it matches `_LAZY`)
__all__ = [
    "AttAttrClassifier",
    "AttentionIntegratedGradients",
    "AttributionMonitor",
    "AttributionResult",
    "Continuation",
    "Contrast",
    "EpochCheckpoint",
    "EpochSummary",
    "GlueDataModule",
    "HeadId",
    "HeadImportanceCallback",
    "HeadPruningCallback",
    "SyntheticDataModule",
    "Token",
    "Tokens",
    "__version__",
    "attention_layers",
    "attention_scope",
    "kv_group_head_mask",
    "prune_heads",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time `__getattr__` imports on first access
    from lightning_attattr.callbacks import (
        AttributionMonitor,
        EpochCheckpoint,
        EpochSummary,
        HeadImportanceCallback,
        HeadPruningCallback,
    )
    from lightning_attattr.core.adapter import attention_scope, kv_group_head_mask
    from lightning_attattr.core.attribution import AttentionIntegratedGradients, AttributionResult
    from lightning_attattr.core.families import attention_layers
    from lightning_attattr.core.importance import HeadId
    from lightning_attattr.core.pruning import prune_heads
    from lightning_attattr.core.targets import Continuation, Contrast, Token, Tokens
    from lightning_attattr.data.modules import GlueDataModule, SyntheticDataModule
    from lightning_attattr.lightning.classifier import AttAttrClassifier


def __getattr__(name: str) -> Any:
    """Import a public name of the package root from its module on first access (PEP 562)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later accesses skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
