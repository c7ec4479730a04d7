"""The interactive report: one self-contained, offline HTML page per results folder of ``analyze.py``.

The page opens by double-click, loads nothing from the network and renders inline in Jupyter. Per
example of an ``attribute`` folder it shows the tokens, the AttAttr map of a chosen layer and head
(or all heads summed) as a heatmap with the raw attention map beside it, the top edges, the
attribution tree or graph (a view selector) with the worst completeness error of its maps, the
prediction and the completeness error per layer; per model it plots what the
``heads``, ``effectiveness``, ``universality``, ``attack`` and ``faithfulness`` subcommands wrote, and
per ``tree`` folder each example's attribution tree (or graph) with its tokens and summary numbers.
The maps are stored as int8 with one scale per map (see :mod:`lightning_attattr.report.data` for
the precision).

Example:
    >>> from lightning_attattr.report import build_report
    >>> report = build_report("results/minilm")  # doctest: +SKIP
    >>> report.save()  # doctest: +SKIP
    PosixPath('results/minilm/report.html')
"""

from __future__ import annotations

import html
from pathlib import Path

from lightning_attattr.analysis.store import write_text
from lightning_attattr.report.data import load_report_data
from lightning_attattr.report.page import render_page

__all__ = ["Report", "build_report"]

#: Height of the inline frame of :meth:`Report._repr_html_`, in CSS pixels.
JUPYTER_HEIGHT = 900


class Report:
    """A rendered report page.

    Args:
        html: the complete page.
        results_dir: the folder it was built from (the default place of :meth:`save`).
        included: the results folders shown, relative to ``results_dir`` (``"."`` for itself).
        skipped: ``(folder, reason)`` for the folders with results files that the page does not show.
    """

    def __init__(
        self,
        html: str,
        results_dir: str | Path,
        included: list[str] | None = None,
        skipped: list[tuple[str, str]] | None = None,
    ) -> None:
        self.html = html
        self.results_dir = Path(results_dir)
        self.included = list(included or [])
        self.skipped = list(skipped or [])

    def save(self, path: str | Path | None = None) -> Path:
        """Write the page atomically (UTF-8); returns the path.

        Args:
            path: target file; default ``<results_dir>/report.html``. Its folder must exist.
        """
        target = self.results_dir / "report.html" if path is None else Path(path)
        return write_text(target, self.html)

    def _repr_html_(self) -> str:
        """The page in a sandboxed ``<iframe srcdoc>``, so its CSS and script stay out of the notebook."""
        return (
            f'<iframe srcdoc="{html.escape(self.html, quote=True)}" sandbox="allow-scripts" '
            f'style="width: 100%; height: {JUPYTER_HEIGHT}px; border: 1px solid #ddd;" '
            'title="AttAttr report"></iframe>'
        )

    def __repr__(self) -> str:
        return f"Report(results_dir={str(self.results_dir)!r}, size={len(self.html.encode('utf-8'))} bytes)"


def build_report(results_dir: str | Path, *, max_examples: int | None = 50, include_attention: bool = True) -> Report:
    """Build the interactive report of a results folder.

    Args:
        results_dir: a results folder of ``analyze.py`` (``attribute``, ``heads``, ``effectiveness``,
            ``universality``, ``attack``, ``faithfulness``, ``tree``), or a folder with such folders below it
            at any depth (e.g. ``results``); the page lists the folders it shows and those it skips.
        max_examples: show at most this many examples of ``attribute`` folders (``None``: all); a
            128-token example of a 12-layer, 12-head model adds a few MB.
        include_attention: show the raw attention maps beside the AttAttr maps when the example
            files hold them.

    Returns:
        The :class:`Report`; ``.html`` is the page, ``.save()`` writes it.

    Raises:
        ArgumentError: ``results_dir`` does not exist or holds nothing reportable.
        DataFileError: a results file that cannot be read.
    """
    data = load_report_data(results_dir, max_examples=max_examples, include_attention=include_attention)
    skipped = [(item["folder"], item["reason"]) for item in data["skipped"]]
    return Report(render_page(data), results_dir, included=data["included"], skipped=skipped)
