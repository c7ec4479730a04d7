"""What the two commands (``train.py``, ``analyze.py``) print: Lightning's noise filtered, narrowly.

:func:`quiet_lightning` is called by both command lines (not on import: a program that only imports
the library keeps Lightning's own output). It removes exactly two messages the user did not ask for,
each matched by its text and its origin, nothing else:

- the "💡 Tip: ... litlogger" advertisement Lightning logs whenever a trainer has no ``LitLogger``;
- the deprecation warning ``isinstance(treespec, LeafSpec)`` that Lightning's own
  ``utilities/_pytree.py`` triggers in torch (the user cannot act on it; Lightning has to).

Every other warning and log record passes. Both filters are installed once per process.
"""

from __future__ import annotations

import logging
import warnings

#: The start of Lightning's litlogger advertisement (``logger_connector.py``), dropped by :class:`_TipFilter`.
LITLOGGER_TIP = "💡 Tip: For seamless cloud logging"
#: The warning text (a regular expression) and the modules that trigger it, filtered by :func:`quiet_lightning`.
LEAFSPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
LEAFSPEC_MODULES = r"(pytorch_lightning|lightning\.pytorch)\.utilities\._pytree"
# the loggers Lightning's rank_zero_info writes to, in both packages
_RANK_ZERO_LOGGERS = (
    "lightning_fabric.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "pytorch_lightning.utilities.rank_zero",
    "lightning.pytorch.utilities.rank_zero",
)


class _TipFilter(logging.Filter):
    """Drops the records that start with :data:`LITLOGGER_TIP`; every other record passes."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.msg if isinstance(record.msg, str) else ""
        return not message.startswith(LITLOGGER_TIP)


_FILTER = _TipFilter()


def quiet_lightning() -> None:
    """Install the two narrow filters of this module (idempotent).

    Example:
        >>> quiet_lightning()
        >>> import logging
        >>> logger = logging.getLogger("pytorch_lightning.utilities.rank_zero")
        >>> [f.filter(logging.makeLogRecord({"msg": LITLOGGER_TIP + "..."})) for f in logger.filters]
        [False]
    """
    for name in _RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
    warnings.filterwarnings("ignore", message=LEAFSPEC_WARNING, module=LEAFSPEC_MODULES)
