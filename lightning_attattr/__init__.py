"""lightning-attattr: Self-Attention Attribution (Hao et al., AAAI 2021) for transformers v5 and Lightning.

The attribution core lives in :mod:`lightning_attattr.core` and imports only ``torch``, ``numpy``
and (in its adapter) ``transformers``; importing this package does not import Lightning.
"""

__version__ = "0.1.0.dev0"
