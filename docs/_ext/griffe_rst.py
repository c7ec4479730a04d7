"""A griffe extension for the API pages: reads the package's reST-flavoured Google docstrings as Markdown.

The package's docstrings use ``Example:`` sections (doctests) and Sphinx roles such as
``:class:`~lightning_attattr.core.attribution.AttributionResult```. griffe's Google parser reads only
``Examples:`` as a doctest section (an ``Example:`` block becomes Markdown text, where doctest output
such as ``[2, 2, 4, 4]`` reads as a link), and Markdown has no roles. This extension rewrites both in
the docstring text before it is parsed: ``Example:`` becomes ``Examples:`` and a role becomes a code
span (``~`` keeps the last name only, as in Sphinx). The source files are not changed.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_ROLE = re.compile(r":(?:class|meth|mod|func|data|attr|obj|exc|const|ref|py:\w+):`(~?)([^`]+)`")


def _role(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    if tilde:
        target = target.rsplit(".", 1)[-1]
    return f"``{target}``"


def rewrite(text: str) -> str:
    """Return ``text`` with ``Example:`` sections renamed and Sphinx roles turned into code spans."""
    return _ROLE.sub(_role, _EXAMPLE.sub(r"\1Examples:", text))


class RestToMarkdown(Extension):
    """Rewrite every docstring once the object tree is complete."""

    def on_object(self, *, obj: Object, **kwargs: Any) -> None:  # noqa: D102
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
