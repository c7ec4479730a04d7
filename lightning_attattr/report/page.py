r"""Turn the report dict of :mod:`lightning_attattr.report.data` into one self-contained HTML page.

The page inlines everything: the stylesheet ``report.css``, the script ``report.js`` (hand-written,
no library) and the data, as JSON inside ``<script type="application/json" id="report-data">``. A
Content-Security-Policy meta tag forbids every network load, so the page works offline and cannot
leak a request even if a value were mishandled.

**Escaping.** In the JSON block the characters ``<``, ``>``, ``&``, U+2028 and U+2029 are written as
``\uXXXX`` escapes (and everything else outside ASCII too), so no token such as ``</script>`` or
``<!--`` can end the block or open markup; ``JSON.parse`` restores the exact strings. The script
then puts data into the document only through ``textContent``, ``setAttribute`` and SVG text
nodes, never as markup.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from typing import Any

__all__ = ["CSP", "json_for_script", "render_page"]

#: Content-Security-Policy of the page: inline script and style only, images from data: URLs, no network.
CSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data: blob:"

_JSON_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def json_for_script(obj: Any) -> str:
    r"""``obj`` as JSON that is safe inside an HTML ``<script>`` element.

    Args:
        obj: JSON-able data (finite floats only).

    Returns:
        Compact JSON text, ASCII only, in which ``<``, ``>`` and ``&`` (and U+2028/U+2029) appear only
        as ``\uXXXX`` escapes.

    Example:
        >>> json_for_script({"token": "</script>&"})
        '{"token":"\\u003c/script\\u003e\\u0026"}'
    """
    text = json.dumps(obj, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
    for char, escape in _JSON_ESCAPES.items():  # only inside strings: JSON syntax never uses these
        text = text.replace(char, escape)
    return text


def _asset(name: str) -> str:
    text = resources.files("lightning_attattr.report").joinpath(name).read_text(encoding="utf-8")
    closing = "</style" if name.endswith(".css") else "</script"
    if closing in text.lower():  # would end the inline element early
        raise RuntimeError(f"The report asset {name} must not contain {closing!r}.")
    return text


def render_page(data: dict[str, Any]) -> str:
    """The report page of ``data`` (a dict from :func:`~lightning_attattr.report.data.load_report_data`).

    Args:
        data: the report dict.

    Returns:
        A complete HTML document (UTF-8 text) that needs no other file and no network.
    """
    title = f"AttAttr report: {data.get('title', '')}"
    return "\n".join(
        [
            "<!DOCTYPE html>",
            '<html lang="en">',
            "<head>",
            '<meta charset="utf-8">',
            f'<meta http-equiv="Content-Security-Policy" content="{html.escape(CSP)}">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{html.escape(title)}</title>",
            f"<style>\n{_asset('report.css')}</style>",
            "</head>",
            "<body>",
            '<div id="report"><p class="loading">Loading the report…</p></div>',
            '<div id="tooltip" class="tooltip" hidden></div>',
            '<noscript><p class="error">This report needs JavaScript.</p></noscript>',
            f'<script type="application/json" id="report-data">{json_for_script(data)}</script>',
            f"<script>\n{_asset('report.js')}</script>",
            "</body>",
            "</html>",
            "",
        ]
    )
