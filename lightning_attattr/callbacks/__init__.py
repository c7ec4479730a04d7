"""Lightning callbacks: AttAttr maps, head importance and head pruning at epoch end, plus two run helpers.

``EpochCheckpoint`` is Lightning's ``ModelCheckpoint`` with ``last.ckpt`` always holding the last
epoch and nothing written under ``fast_dev_run``; ``EpochSummary`` prints one line per epoch with
the main metrics when output goes to a file or a pipe, and appends it to ``<log_dir>/progress.log``.

They work with any LightningModule that follows the small protocol in
:mod:`lightning_attattr.callbacks._protocol` (a Hugging Face model and dict batches, or
``attattr_model()`` / ``attattr_inputs(batch)``).
"""

from lightning_attattr.callbacks._protocol import AttAttrModule
from lightning_attattr.callbacks.attribution_monitor import AttributionMonitor
from lightning_attattr.callbacks.checkpoint import EpochCheckpoint
from lightning_attattr.callbacks.head_importance import HeadImportanceCallback
from lightning_attattr.callbacks.head_pruning import HeadPruningCallback
from lightning_attattr.callbacks.progress import EpochSummary

__all__ = [
    "AttAttrModule",
    "AttributionMonitor",
    "EpochCheckpoint",
    "EpochSummary",
    "HeadImportanceCallback",
    "HeadPruningCallback",
]
