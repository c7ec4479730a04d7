"""A griffe extension for the API pages: reads the package's reST-flavoured Google docstrings as Markdown.

The package's docstrings use ``Example:`` sections (doctests) and Sphinx roles such as
``:class:`~lightning_attattr.core.attribution.AttributionResult```. griffe's Google parser reads only
``Examples:`` as a doctest section (an ``Example:`` block becomes Markdown text, where doctest output
such as ``[2, 2, 4, 4]`` reads as a link), and Markdown has no roles. This extension rewrites both in
the docstring text before it is parsed: ``Example:`` becomes ``Examples:``, a role becomes a code
span (``~`` keeps the last name only, as in Sphinx) and a reST ``text::`` before a literal block ends
in one colon. The source files are not changed.
"""

from __future__ import annotations

import re
from typing import Any

from griffe import Extension, Object

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_LITERAL = re.compile(r"(\S)::$", re.MULTILINE)  # reST "text::" before an indented literal block
_ROLE = re.compile(r":(?:class|meth|mod|func|data|attr|obj|exc|const|ref|py:\w+):`(~?)([^`]+)`")


def _role(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    if tilde:
        target = target.rsplit(".", 1)[-1]
    return f"``{target}``"


def rewrite(text: str) -> str:
    """Return ``text`` with ``Example:`` sections renamed, Sphinx roles as code spans, ``::`` as ``:``."""
    return _LITERAL.sub(r"\1:", _ROLE.sub(_role, _EXAMPLE.sub(r"\1Examples:", text)))


class RestToMarkdown(Extension):
    """Rewrite every docstring once the object tree is complete."""

    def on_object(self, *, obj: Object, **kwargs: Any) -> None:  # noqa: D102
        _rewrite_docstring(obj)

    def on_package(self, *, pkg: Object, **kwargs: Any) -> None:  # noqa: D102
        _rewrite_docstring(pkg)  # the package itself is not passed to `on_object`


def _rewrite_docstring(obj: Object) -> None:
    if obj.docstring is not None:  # `rewrite` is idempotent: a second call changes nothing
        obj.docstring.value = rewrite(obj.docstring.value)
