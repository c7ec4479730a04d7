"""Lightning callbacks: AttAttr maps, head importance and head pruning at epoch end.

They work with any LightningModule that follows the small protocol in
:mod:`lightning_attattr.callbacks._protocol` (a Hugging Face model and dict batches, or
``attattr_model()`` / ``attattr_inputs(batch)``).
"""

from lightning_attattr.callbacks._protocol import AttAttrModule
from lightning_attattr.callbacks.attribution_monitor import AttributionMonitor
from lightning_attattr.callbacks.head_importance import HeadImportanceCallback
from lightning_attattr.callbacks.head_pruning import HeadPruningCallback

__all__ = ["AttAttrModule", "AttributionMonitor", "HeadImportanceCallback", "HeadPruningCallback"]
