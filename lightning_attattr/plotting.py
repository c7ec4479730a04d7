"""Figures for attribution maps, head importance and pruning curves.

Every function builds and returns a :class:`matplotlib.figure.Figure` and never shows, saves or logs
it: the caller decides where it goes (``logger.experiment.add_figure``, ``fig.savefig``, or
:func:`figure_to_array` followed by ``add_image(..., dataformats="HWC")``). The figures are created
directly with an Agg canvas, not through :mod:`matplotlib.pyplot`, so no global figure registry,
GUI backend or interactive state is touched, and a figure is freed like any other object once
unreferenced (no ``plt.close`` needed). matplotlib itself is imported lazily, inside the functions,
so importing this module costs nothing.

Inputs may be ``torch.Tensor`` (any device or dtype) or anything :func:`numpy.asarray` accepts. Shapes
follow the package vocabulary: an attribution map of one example and layer is
``[head, query_pos, key_pos]`` (e.g. ``result.attributions[i][layer_idx]`` of an
:class:`~lightning_attattr.core.attribution.AttributionResult`), head scores are ``[layer, head]``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

import numpy as np

from lightning_attattr.core.arrays import as_array, check_square
from lightning_attattr.core.checks import ArgumentError, ArgumentTypeError

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap, Normalize
    from matplotlib.figure import Figure
    from matplotlib.image import AxesImage

#: Default colormap for signed attributions: red positive, blue negative, white at zero.
DIVERGING_CMAP = "RdBu_r"
#: head_grid shows token tick labels only up to this many tokens (the panels are small).
MAX_GRID_TOKENS = 24
#: importance_heatmap annotates cells by default up to this many layers and heads.
MAX_ANNOTATED = 16

# token_heatmap geometry (inches): space per token, room for labels/colorbar, figure side limits
_CELL_IN = 0.22
_MARGIN_IN = 2.5
_MIN_SIDE_IN, _MAX_SIDE_IN = 4.0, 16.0
_PANEL_IN = 2.4  # one head_grid panel


def _new_figure(figsize: tuple[float, float]) -> Figure:
    """A pyplot-free figure with an Agg canvas and constrained layout (fits labels and colorbars)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself as fig.canvas
    return fig


def _check_tokens(tokens: object, n: int, shape: Sequence[int]) -> list[str]:
    if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Sequence):
        raise ArgumentTypeError(f"Expected `tokens` to be a sequence of strings, but got {type(tokens).__name__}.")
    if len(tokens) != n:
        raise ArgumentError(
            f"Expected `tokens` to have one entry per position ({n}, from attribution shape {list(shape)}), "
            f"but got {len(tokens)}."
        )
    return [str(t) for t in tokens]


@overload
def _check_title(title: str) -> str: ...
@overload
def _check_title(title: object) -> str | None: ...
def _check_title(title: object) -> str | None:
    if title is None or isinstance(title, str):
        return title
    raise ArgumentTypeError(f"Expected `title` to be a string or None, but got {type(title).__name__}.")


def _symmetric_limit(arr: np.ndarray) -> float:
    """Largest finite ``|value|``, so that ``[-limit, limit]`` centres the colour scale at 0 (1.0 if all zero)."""
    finite = np.abs(arr[np.isfinite(arr)])
    limit = float(finite.max()) if finite.size else 0.0
    return limit if limit > 0 else 1.0


def _fontsize(cell_in: float, lo: float = 5.0, hi: float = 10.0) -> float:
    """A tick-label size (points) that fits a cell of ``cell_in`` inches."""
    return float(np.clip(0.75 * 72 * cell_in, lo, hi))


def _label_room(labels: Sequence[str], fontsize: float) -> float:
    """Inches that the longest of ``labels`` needs when rotated by 90 degrees (with a small gap)."""
    longest = max((len(str(t)) for t in labels), default=0)
    return 0.62 * fontsize / 72 * longest + 0.45


def _set_token_ticks(ax: Axes, tokens: list[str], fontsize: float, *, x: bool = True, y: bool = True) -> None:
    positions = range(len(tokens))
    if x:
        ax.set_xticks(positions, tokens, rotation=90, fontsize=fontsize)
    else:
        ax.set_xticks(positions, [""] * len(tokens))
    if y:
        ax.set_yticks(positions, tokens, fontsize=fontsize)
    else:
        ax.set_yticks(positions, [""] * len(tokens))


def token_heatmap(
    attr: Any,
    tokens: Sequence[str],
    title: str | None = None,
    cmap: str | Colormap = DIVERGING_CMAP,
) -> Figure:
    """Heatmap of one layer's attribution map with the tokens on both axes.

    Rows are queries (the attending token), columns are keys (the attended-to token), so the cell
    ``(i, j)`` shows the attribution of "token ``i`` attends to token ``j``". Attributions are signed:
    the colour scale is symmetric around 0 (``[-max|attr|, max|attr|]``) with a diverging colormap,
    so white means no contribution. The figure grows with the number of tokens and stays readable
    up to about 64 tokens (x labels are rotated, the font shrinks for longer inputs).

    Args:
        attr: ``[query_pos, key_pos]`` attribution of one example and layer, usually summed over
            heads: ``result.attributions[i][layer_idx].sum(0)``. Tensor or array-like.
        tokens: ``query_pos`` token strings (e.g. ``tokenizer.convert_ids_to_tokens(ids)``), used for
            both axes.
        title: Figure title; none by default.
        cmap: Colormap name or object; should be diverging. Default ``"RdBu_r"``.

    Returns:
        A new figure with the heatmap axes and a colorbar.

    Raises:
        ValueError: If ``attr`` is not a non-empty square 2-d map, or ``tokens`` does not have
            ``query_pos`` entries.
        TypeError: If ``attr`` cannot be converted to an array, ``tokens`` is not a sequence of strings
            (a plain ``str`` is rejected), or ``title`` is not a string.
    """
    dims = ("query_pos", "key_pos")
    arr = as_array("attr", attr, dims)
    check_square("attr", arr, dims)
    n = arr.shape[0]
    labels = _check_tokens(tokens, n, arr.shape)
    title = _check_title(title)

    side = float(np.clip(_CELL_IN * n + _MARGIN_IN, _MIN_SIDE_IN, _MAX_SIDE_IN))
    fontsize = _fontsize((side - _MARGIN_IN) / n)
    room = _label_room(labels, fontsize)  # the rotated x labels and the y labels must fit in the figure
    fig = _new_figure((side + 1.0 + room, side + room))  # + colorbar
    ax = fig.add_subplot()
    limit = _symmetric_limit(arr)
    im = ax.imshow(arr, cmap=cmap, vmin=-limit, vmax=limit, interpolation="nearest", aspect="equal")
    _set_token_ticks(ax, labels, fontsize)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query")
    fig.colorbar(im, ax=ax, label="attribution", shrink=0.8)
    if title is not None:
        ax.set_title(title)
    return fig


def head_grid(
    attr: Any,
    tokens: Sequence[str] | None = None,
    title: str | None = None,
    max_cols: int = 4,
    *,
    scale: str = "head",
) -> Figure:
    """Grid of per-head attribution maps of one layer.

    One panel per head, ``max_cols`` panels per row. With ``scale="head"`` (the default) every panel
    has its own colour scale, symmetric around 0 (``[-max|attr_h|, max|attr_h|]``) with its own
    colorbar, and its title gives that range (``"head h (±0.12)"``): one large cell of one head (often
    ``[CLS]`` <- ``[SEP]``) then no longer washes out the structure of the other heads. The figure
    title says "colour scale per head". With ``scale="shared"`` all panels share one scale over all
    heads and one colorbar, so heads can be compared by colour directly. Token tick labels are drawn
    only when ``tokens`` is given and has at most 24 entries (x labels on the bottom panel of each
    column, y labels on the first column); the figure leaves room for the longest label.

    Args:
        attr: ``[head, query_pos, key_pos]`` attribution of one example and layer, e.g.
            ``result.attributions[i][layer_idx]``. Tensor or array-like.
        tokens: Optional ``query_pos`` token strings for the tick labels.
        title: Figure title (suptitle); none by default.
        max_cols: Maximum number of panels per row, a positive integer. Default 4.
        scale: ``"head"`` (one colour scale per panel, default) or ``"shared"`` (one for all).

    Returns:
        A new figure with ``head`` image axes and one colorbar per head (``"head"``) or one in all
        (``"shared"``).

    Raises:
        ValueError: If ``attr`` is not a non-empty ``[head, query_pos, key_pos]`` map with
            ``query_pos == key_pos``, ``tokens`` does not have ``query_pos`` entries, ``max_cols``
            is not positive, or ``scale`` is not ``"head"`` or ``"shared"``.
        TypeError: If ``attr`` cannot be converted to an array, ``tokens`` is not a sequence of
            strings, ``max_cols`` is not an integer, or ``title`` is not a string.

    Example:
        >>> fig = head_grid(np.eye(3)[None].repeat(2, 0) * [[[1.0]], [[0.1]]], ["a", "b", "c"])
        >>> [ax.get_title() for ax in fig.axes if ax.images]
        ['head 0 (±1)', 'head 1 (±0.1)']
    """
    dims = ("head", "query_pos", "key_pos")
    arr = as_array("attr", attr, dims)
    check_square("attr", arr, dims)
    if isinstance(max_cols, bool) or not isinstance(max_cols, int):
        raise ArgumentTypeError(f"Expected `max_cols` to be a positive integer, but got {max_cols!r}.")
    if max_cols < 1:
        raise ArgumentError(f"Expected `max_cols` to be a positive integer, but got {max_cols}.")
    if scale not in ("head", "shared"):
        raise ArgumentError(f"Expected `scale` to be 'head' or 'shared', but got {scale!r}.")
    n_heads, n = arr.shape[0], arr.shape[1]
    labels = None if tokens is None else _check_tokens(tokens, n, arr.shape)
    title = _check_title(title)
    tick_labels = labels if labels is not None and n <= MAX_GRID_TOKENS else None
    per_head = scale == "head"

    n_cols = min(max_cols, n_heads)
    n_rows = math.ceil(n_heads / n_cols)
    fontsize = _fontsize(_PANEL_IN / n, hi=8.0)
    room = _label_room(tick_labels, fontsize) if tick_labels else 0.0  # rotated x labels, y labels
    width = n_cols * (_PANEL_IN + (0.9 if per_head else 0.0)) + room + 1.0
    height = n_rows * (_PANEL_IN + 0.3) + room + (0.5 if title or per_head else 0.0)
    fig = _new_figure((width, height))
    grid = fig.subplots(n_rows, n_cols, squeeze=False)
    shared_limit = _symmetric_limit(arr)
    axes = []
    for h, ax in enumerate(grid.flat):
        if h >= n_heads:
            ax.remove()  # unused cells of the last row
            continue
        limit = _symmetric_limit(arr[h]) if per_head else shared_limit
        # aspect "auto": the panel fills its slot, so the layout can keep the tick labels inside the figure
        im = ax.imshow(arr[h], cmap=DIVERGING_CMAP, vmin=-limit, vmax=limit, interpolation="nearest", aspect="auto")
        ax.set_title(f"head {h} (\u00b1{limit:.2g})" if per_head else f"head {h}", fontsize=9)
        if tick_labels is not None:
            bottom = h + n_cols >= n_heads  # no panel below in this column
            _set_token_ticks(ax, tick_labels, fontsize, x=bottom, y=h % n_cols == 0)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
        if per_head:
            bar = fig.colorbar(im, ax=ax, shrink=0.8, pad=0.02)
            bar.ax.tick_params(labelsize=6)
        axes.append(ax)
    if not per_head:
        fig.colorbar(im, ax=axes, label="attribution", shrink=0.8)
    scale_note = "attribution, colour scale per head" if per_head else "attribution, one colour scale"
    fig.suptitle(f"{title} ({scale_note})" if title is not None else scale_note)
    return fig


def layer_maps(
    maps: Any,
    tokens: Sequence[str],
    layers: Sequence[int],
    title: str | None = None,
    max_cols: int = 3,
) -> Figure:
    """One panel per layer of one example's head-summed attribution maps, each on its own scale.

    Every panel is symmetric around 0 (``[-max|map|, max|map|]``, given in its title) with a
    diverging colormap. Token tick labels (x rotated by 90 degrees) are drawn up to 48 tokens, and
    the figure leaves room for the longest of them, so no label is cut off.

    Args:
        maps: ``[layer, query_pos, key_pos]`` head-summed maps, e.g. ``result.attributions[i].sum(1)``.
        tokens: ``query_pos`` token strings.
        layers: the ``layer`` layer indices of the rows of ``maps`` (panel titles).
        title: Figure title (suptitle); none by default.
        max_cols: Maximum number of panels per row. Default 3.

    Returns:
        A new figure with one image axes per layer.

    Raises:
        ValueError: If ``maps`` is not a ``[layer, query_pos, key_pos]`` map with ``query_pos ==
            key_pos``, or ``tokens`` / ``layers`` do not have one entry per position / row.
        TypeError: If ``maps`` cannot be converted to an array, ``tokens`` is not a sequence of
            strings, or ``title`` is not a string.

    Example:
        >>> fig = layer_maps(np.ones((2, 3, 3)), ["[CLS]", "a", "[SEP]"], [0, 1])
        >>> [ax.get_title() for ax in fig.axes]
        ['layer 0 (heads summed, \u00b11)', 'layer 1 (heads summed, \u00b11)']
    """
    dims = ("layer", "query_pos", "key_pos")
    arr = as_array("maps", maps, dims)
    check_square("maps", arr, dims)
    n_layers, n = arr.shape[0], arr.shape[1]
    labels = _check_tokens(tokens, n, arr.shape)
    if len(layers) != n_layers:
        raise ArgumentError(f"Expected `layers` to have one entry per map ({n_layers}), but got {len(layers)}.")
    title = _check_title(title)
    cols = min(max_cols, n_layers)
    rows = math.ceil(n_layers / cols)
    panel = 2.0 + 0.18 * n
    show_ticks = n <= 48
    fontsize = 6.0
    room = _label_room(labels, fontsize) if show_ticks else 0.0
    fig = _new_figure((cols * (panel + room), rows * (panel + room) + (0.5 if title else 0.0)))
    grid = fig.subplots(rows, cols, squeeze=False)
    for k, ax in enumerate(grid.flat):
        if k >= n_layers:
            ax.remove()
            continue
        limit = _symmetric_limit(arr[k])
        ax.imshow(arr[k], cmap=DIVERGING_CMAP, vmin=-limit, vmax=limit, interpolation="nearest", aspect="auto")
        ax.set_title(f"layer {layers[k]} (heads summed, \u00b1{limit:.2g})", fontsize=9)
        if show_ticks:
            _set_token_ticks(ax, labels, fontsize)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
    if title is not None:
        fig.suptitle(title)
    return fig


def importance_heatmap(
    importance: Any,
    title: str | None = None,
    annotate: bool | None = None,
    *,
    layers: Sequence[int] | None = None,
    cmap: str | Colormap | None = None,
) -> Figure:
    """Heatmap of per-head scores, layers as rows (layer 0 at the top) and heads as columns.

    With non-negative scores (e.g. AttAttr head importance) the colormap is sequential
    (``"viridis"``); with signed scores it is diverging and symmetric around 0.

    Args:
        importance: ``[layer, head]`` scores. Tensor or array-like.
        title: Axes title; none by default.
        annotate: Write each value (2 significant digits) into its cell. ``None`` (default) does so
            when there are at most 16 layers and 16 heads.
        layers: Row labels, ``layer`` layer indices (e.g. ``AttributionResult.layers`` when only some
            layers were attributed). Default ``0 .. layer - 1``.
        cmap: Colormap name or object; ``None`` picks as described above.

    Returns:
        A new figure with the heatmap axes and a colorbar.

    Raises:
        ValueError: If ``importance`` is not a non-empty 2-d ``[layer, head]`` array or ``layers``
            does not have ``layer`` entries.
        TypeError: If ``importance`` cannot be converted to an array, ``annotate`` is not a bool or
            None, or ``title`` is not a string.
    """
    arr = as_array("importance", importance, ("layer", "head"))
    annotate = _check_importance_options(arr, annotate, layers)
    title = _check_title(title)
    colormap, vmin, vmax = _importance_scale(arr, cmap)

    fig = _new_figure(_importance_figsize(arr.shape, annotate))
    ax = fig.add_subplot()
    # origin="upper": row 0 (layer 0) is drawn at the top
    im = ax.imshow(arr, cmap=colormap, vmin=vmin, vmax=vmax, origin="upper", interpolation="nearest", aspect="auto")
    _set_layer_head_ticks(ax, arr.shape, layers)
    fig.colorbar(im, ax=ax, label="score")
    if annotate:
        _annotate_cells(ax, im, arr, colormap)
    if title is not None:
        ax.set_title(title)
    return fig


def _check_importance_options(arr: np.ndarray, annotate: object, layers: Sequence[int] | None) -> bool:
    """Check ``annotate`` and ``layers`` against the ``[layer, head]`` scores; ``annotate`` with its default."""
    n_layers, n_heads = arr.shape
    if annotate is not None and not isinstance(annotate, bool):
        raise ArgumentTypeError(f"Expected `annotate` to be a bool or None, but got {annotate!r}.")
    if layers is not None and len(layers) != n_layers:
        raise ArgumentError(
            f"Expected `layers` to have one entry per row of `importance` ({n_layers}, from shape "
            f"{list(arr.shape)}), but got {len(layers)}."
        )
    if annotate is None:
        return n_layers <= MAX_ANNOTATED and n_heads <= MAX_ANNOTATED
    return annotate


def _importance_scale(arr: np.ndarray, cmap: str | Colormap | None) -> tuple[Colormap, float, float]:
    """Colormap and ``(vmin, vmax)``: diverging and symmetric around 0 for signed scores, else sequential."""
    import matplotlib as mpl

    signed = bool(np.nanmin(arr) < 0) if np.isfinite(arr).any() else False
    if signed:
        limit = _symmetric_limit(arr)
        vmin, vmax = -limit, limit
    else:
        finite = arr[np.isfinite(arr)]
        vmin, vmax = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    colormap = mpl.colormaps.get_cmap(cmap if cmap is not None else DIVERGING_CMAP if signed else "viridis")
    return colormap, vmin, vmax


def _importance_figsize(shape: tuple[int, ...], annotate: bool) -> tuple[float, float]:
    """Figure size (inches) for ``[layer, head]`` scores: bigger cells when the values are written in."""
    n_layers, n_heads = shape
    cell = 0.55 if annotate else 0.3
    return float(np.clip(cell * n_heads + 2.2, 4.0, 16.0)), float(np.clip(cell * n_layers + 1.5, 3.0, 16.0))


def _set_layer_head_ticks(ax: Axes, shape: tuple[int, ...], layers: Sequence[int] | None) -> None:
    """Layer numbers (``layers``, default ``0 ..``) on the rows, head numbers on the columns."""
    n_layers, n_heads = shape
    row_labels = [str(i) for i in (range(n_layers) if layers is None else layers)]
    ax.set_yticks(range(n_layers), row_labels)
    ax.set_xticks(range(n_heads), [str(h) for h in range(n_heads)])
    ax.set_ylabel("layer")
    ax.set_xlabel("head")


def _annotate_cells(ax: Axes, im: AxesImage, arr: np.ndarray, colormap: Colormap) -> None:
    """Write each finite value (2 significant digits) into its cell, white on dark cells, black on light."""
    fontsize = float(np.clip(9 - 0.25 * max(arr.shape[1] - 8, 0), 5, 9))
    for (i, j), v in np.ndenumerate(arr):
        if not np.isfinite(v):
            continue
        r, g, b, _ = colormap(im.norm(v))
        dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5  # perceived luminance of the cell
        ax.text(j, i, f"{v:.2g}", ha="center", va="center", fontsize=fontsize, color="white" if dark else "black")


def pruning_curve(
    fractions: Sequence[float],
    curves: Mapping[str, Sequence[float]],
    metric_name: str = "accuracy",
    title: str | None = None,
    bands: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None = None,
    xlabel: str = "heads pruned",
    percent: bool = True,
) -> Figure:
    """Metric against the fraction of heads pruned, one line per head-ranking method.

    ``bands`` shades a ``(low, high)`` range around the curve of the same name (e.g. the spread of
    the random baseline over seeds); ``percent=False`` with another ``xlabel`` plots any x values
    (e.g. heads pruned per layer).

    Args:
        fractions: ``[n_points]`` fractions of heads pruned, each in ``[0, 1]`` (plotted as
            percentages).
        curves: Ranking method name (e.g. ``"attattr"``, ``"taylor"``, ``"random"``) to the
            ``[n_points]`` metric values at ``fractions``. ``NaN`` leaves a gap.
        metric_name: y-axis label. Default ``"accuracy"``.
        title: Axes title; none by default.
        bands: optional ``name -> (low, high)`` ranges shaded around the curve of that name.
        xlabel: x-axis label. Default ``"heads pruned"``.
        percent: ``fractions`` are fractions in ``[0, 1]`` shown as percentages (default); ``False``
            plots any x values as they are.

    Returns:
        A new figure with one axes holding one line per entry of ``curves``, in mapping order, with a
        legend beside the axes and a grid. Each line has its own marker and line style; where curves
        coincide, the earlier ones are drawn wider underneath so that every one stays visible, and
        the legend names the curve a later one coincides with (``"taylor (= attattr)"``).

    Raises:
        ValueError: If ``fractions`` is empty, not 1-d, or outside ``[0, 1]``, ``curves`` is empty,
            or a curve does not have ``n_points`` values.
        TypeError: If ``curves`` is not a mapping, a value cannot be converted to an array, or
            ``title`` is not a string.
    """
    x = _check_fractions(fractions, percent)
    ys = _check_curves(curves, x)
    title = _check_title(title)

    from matplotlib.ticker import PercentFormatter

    fig = _new_figure((7.5, 4.0))
    ax = fig.add_subplot()
    _plot_curves(ax, x, ys, bands)
    if percent:
        ax.xaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric_name)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)  # beside the axes: covers no curve
    if title is not None:
        ax.set_title(title)
    return fig


def _check_fractions(fractions: Sequence[float], percent: bool) -> np.ndarray:
    """``fractions`` as a ``[n_points]`` array, each in ``[0, 1]`` when they are shown as percentages."""
    x = as_array("fractions", fractions, ("n_points",))
    if percent and (not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > 1):
        raise ArgumentError(
            f"Expected `fractions` to be fractions of heads pruned in [0, 1], but got {x.tolist()} "
            "(pass percentages divided by 100)."
        )
    return x


def _check_curves(curves: Mapping[str, Sequence[float]], x: np.ndarray) -> dict[str, np.ndarray]:
    """Method name (as a string) to its values as an array of the shape of ``x``, in mapping order."""
    if not isinstance(curves, Mapping):
        raise ArgumentTypeError(
            f"Expected `curves` to be a mapping of method name to values, but got {type(curves).__name__}."
        )
    if not curves:
        raise ArgumentError("Expected `curves` to contain at least one method, but got an empty mapping.")
    ys = {}
    for name, values in curves.items():
        y = as_array(f"curves[{name!r}]", values, ("n_points",))
        if y.shape != x.shape:
            raise ArgumentError(
                f"Expected `curves[{name!r}]` to have one value per fraction (shape {list(x.shape)}, as "
                f"`fractions`), but got shape {list(y.shape)}."
            )
        ys[str(name)] = y
    return ys


#: Line styles of pruning_curve, cycled with the markers (8 x 4 distinct combinations).
_LINESTYLES = ("-", "--", "-.", ":")
_MARKERS = "osD^vP*X"


def _plot_curves(
    ax: Axes,
    x: np.ndarray,
    ys: Mapping[str, np.ndarray],
    bands: Mapping[str, tuple[Sequence[float], Sequence[float]]] | None,
) -> None:
    """One line per curve, each distinguishable where curves coincide, and its band shaded in its colour.

    Curves often coincide (all methods at the same accuracy until most heads are pruned). So each curve
    has its own marker and line style, the first curve is drawn widest and largest at the bottom and
    each later one narrower on top, so that every colour still shows at the rim of the ones above it,
    and the legend names the earlier curve a curve coincides with (``"taylor (= attattr)"``).
    """
    n = len(ys)
    names = list(ys)
    for k, (name, y) in enumerate(ys.items()):
        depth = (n - 1 - k) / max(n - 1, 1)  # 1 for the bottom curve, 0 for the top one
        same = next((other for other in names[:k] if np.array_equal(ys[other], y, equal_nan=True)), None)
        (line,) = ax.plot(
            x,
            y,
            marker=_MARKERS[k % len(_MARKERS)],
            linestyle=_LINESTYLES[k % len(_LINESTYLES)],
            linewidth=1.2 + 4.0 * depth,
            markersize=4.0 + 10.0 * depth,
            zorder=2 + k,
            label=name if same is None else f"{name} (= {same})",
        )
        if bands and name in bands:
            low, high = (np.asarray(v, dtype=float) for v in bands[name])
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)


def figure_to_array(fig: Figure) -> np.ndarray:
    """Render a figure with Agg into an RGB image array.

    Meant for ``logger.experiment.add_image(tag, figure_to_array(fig), step, dataformats="HWC")``,
    which, unlike ``add_figure``, never imports :mod:`matplotlib.pyplot`. The figure is neither
    closed nor otherwise changed; transparent pixels are composited onto white.

    Args:
        fig: Any matplotlib figure (from this module or elsewhere, whatever its canvas).

    Returns:
        ``[H, W, 3]`` ``uint8`` array with ``H, W = int(height_in * dpi), int(width_in * dpi)``.

    Raises:
        TypeError: If ``fig`` is not a :class:`matplotlib.figure.Figure`.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not isinstance(fig, Figure):
        raise ArgumentTypeError(f"Expected `fig` to be a matplotlib Figure, but got {type(fig).__name__}.")
    if isinstance(fig.canvas, FigureCanvasAgg):
        fig.canvas.draw()
        rgba = np.asarray(fig.canvas.buffer_rgba())  # [H, W, 4], straight (non-premultiplied) alpha
    else:
        # another canvas (e.g. an interactive backend): render through a temporary Agg canvas
        # without replacing the figure's own
        import io

        buf = io.BytesIO()
        width, height = (int(v) for v in fig.bbox.size)
        fig.savefig(buf, format="rgba", dpi=fig.dpi)
        rgba = np.frombuffer(buf.getvalue(), dtype=np.uint8).reshape(height, width, 4)
    alpha = rgba[..., 3:].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
    return np.ascontiguousarray(np.rint(rgb).astype(np.uint8))


def scatter_grid(vectors: Mapping[str, Any], title: str | None = None) -> Figure:
    """Pairwise scatter plots of importance vectors (one point per head), Pearson r in each panel.

    Args:
        vectors: name -> ``[layer, head]`` (or flat) importance, all of one size; at least two.
        title: figure title; none by default.
    """
    from lightning_attattr.analysis.universality import pearson, spearman

    names = list(vectors)
    if len(names) < 2:
        raise ArgumentError(f"Expected at least two importance vectors to compare, but got {len(names)}.")
    import torch

    flat = {n: torch.as_tensor(np.asarray(vectors[n], dtype=float)).flatten() for n in names}
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    cols = min(3, len(pairs))
    rows = (len(pairs) + cols - 1) // cols
    fig = _new_figure((3.2 * cols, 3.0 * rows))
    for k, (a, b) in enumerate(pairs):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.scatter(flat[a].numpy(), flat[b].numpy(), s=10, alpha=0.7)
        ax.set_xlabel(a, fontsize=8)
        ax.set_ylabel(b, fontsize=8)
        ax.set_title(f"r={pearson(flat[a], flat[b]):.2f}  rho={spearman(flat[a], flat[b]):.2f}", fontsize=9)
        ax.tick_params(labelsize=7)
    if title is not None:
        fig.suptitle(_check_title(title))
    return fig


def correlation_heatmap(matrix: Sequence[Sequence[float]], names: Sequence[str], title: str | None = None) -> Figure:
    """A ``[name, name]`` correlation matrix in [-1, 1] with the values written in the cells."""
    arr = np.asarray(matrix, dtype=float)
    if arr.shape != (len(names), len(names)):
        raise ArgumentError(f"Expected a {len(names)} x {len(names)} matrix (one row per name), but got {arr.shape}.")
    fig = _new_figure((1.2 + 0.9 * len(names), 1.0 + 0.8 * len(names)))
    ax = fig.add_subplot()
    image = ax.imshow(arr, cmap="RdBu_r", vmin=-1, vmax=1)
    ax.set_xticks(range(len(names)), labels=list(names), rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), labels=list(names), fontsize=8)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, "" if np.isnan(arr[i, j]) else f"{arr[i, j]:.2f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.046)
    if title is not None:
        ax.set_title(_check_title(title))
    return fig


def tree_figure(graph: Any, tokens: Sequence[str] | None, *, title: str | None = None) -> Figure:
    """Draw an attribution tree or graph over the input: tokens left to right, layers bottom to top.

    Every token of the input gets an x position and a tick label (rotated); the tokens in the tree
    are drawn as nodes at the height of their ``layer`` (the layer of the edge that attached them;
    the root sits on the top row) and their labels are dark and bold, the others faint. Each edge is
    an arrow from the child (key) up to the parent (query), the direction in which information
    flows, coloured and widened by its raw attribution (``a^l[i, j]``, on one linear scale from 0 to
    the largest edge attribution, shown by the colorbar): the edge with the largest attribution is
    the widest and darkest, whatever its layer. (The normalised score that selects the edges is
    relative to its layer's largest entry, so it is not comparable across layers and is not drawn.)
    The figure widens with the number of tokens and stays readable for 40-token inputs; a root-only tree is drawn too.

    A graph (:func:`lightning_attattr.analysis.trees.build_graph`) is drawn as its layered view
    (:func:`~lightning_attattr.analysis.trees.layered_dag`): an edge of layer ``l`` goes from the
    key at height ``l`` up to the query at height ``l + 1``, a token's positions on several rows are
    joined by a faint vertical line, and the edges the tree would drop are dashed.

    Args:
        graph: An attribution tree from :func:`lightning_attattr.analysis.trees.build_tree` or a
            graph from :func:`~lightning_attattr.analysis.trees.build_graph`.
        tokens: All ``n`` token strings of the input (the ``tokens`` given to ``build_tree``);
            ``None`` labels the tree tokens with their text and the others with their index.
        title: Axes title; by default ``tau`` and the root rule.

    Returns:
        A new figure with one axes (and a colorbar when the tree has edges).

    Raises:
        TypeError: If ``graph`` is not an attribution tree, ``tokens`` is not a sequence of strings or
            ``title`` is not a string.
        ValueError: If ``tokens`` does not have one entry per input position.
    """
    graph = _check_tree_graph(graph)
    labels = _tree_labels(graph, tokens)
    title = _check_title(title)
    view = _tree_view(graph, labels)
    if title is None:
        title = _default_tree_title(view)

    fig = _new_figure((view.width, view.height))
    ax = fig.add_subplot()
    _draw_tree_grid(ax, view)
    layout = _layered_layout(graph) if view.is_graph else _tree_layout(graph)
    _draw_tree_edges(ax, view, layout)
    _draw_tree_nodes(ax, view, layout.nodes)
    _format_tree_axes(ax, view)
    if graph.number_of_edges():
        import matplotlib as mpl

        mappable = mpl.cm.ScalarMappable(norm=view.norm, cmap=view.cmap)
        fig.colorbar(mappable, ax=ax, label="edge colour and width: attribution", shrink=0.8, pad=0.01)
    ax.set_title(title)
    return fig


@dataclass(frozen=True)
class _TreeView:
    """What the drawing steps of :func:`tree_figure` share: the input, its size and the edge colours."""

    graph: Any  # the tree (nx.DiGraph) or graph (nx.MultiDiGraph)
    labels: list[str]  # one per input position
    is_graph: bool
    n_layers: int
    width: float  # figure size, inches
    height: float
    cmap: Colormap  # edge colour by raw attribution, over [vmin, vmax] = [0, largest edge attribution]
    norm: Normalize
    vmin: float
    vmax: float

    @property
    def n(self) -> int:
        """Number of input positions (tokens or words), in the tree or not."""
        return len(self.labels)


#: A drawn edge, from the child (key) up to the parent (query): ``(x0, y0, x1, y1, edge data)``.
_Arrow = tuple[float, float, float, float, dict[str, Any]]
#: A drawn node: ``(x, y, token index)``.
_Node = tuple[float, float, int]


@dataclass(frozen=True)
class _TreeLayout:
    """Where :func:`tree_figure` draws the nodes and edges (data coordinates: token index, layer)."""

    arrows: list[_Arrow]
    nodes: list[_Node]
    #: a graph's residual links, ``(above, below)`` pairs of ``(rank, token)`` nodes joining a token's rows
    residuals: list[tuple[tuple[int, int], tuple[int, int]]]


def _check_tree_graph(graph: object) -> Any:
    """``graph`` itself if it is a tree or graph from build_tree / build_graph."""
    import networkx as nx

    if not isinstance(graph, nx.DiGraph) or not {"root", "n_layers"} <= set(graph.graph):
        raise ArgumentTypeError(
            "Expected `graph` to be an attribution tree or graph from build_tree / build_graph, "
            f"but got {type(graph).__name__}."
        )
    return graph


def _tree_labels(graph: Any, tokens: object) -> list[str]:
    """One label per input position: ``tokens``, or by default the tree's token text (else the index)."""
    n = int(graph.graph.get("n_tokens", max(graph.nodes) + 1))
    if tokens is None:
        return [str(graph.nodes[i]["token"]) if i in graph else str(i) for i in range(n)]
    if isinstance(tokens, (str, bytes)) or not isinstance(tokens, Sequence):
        raise ArgumentTypeError(
            f"Expected `tokens` to be a sequence of strings or None, but got {type(tokens).__name__}."
        )
    if len(tokens) != n:
        raise ArgumentError(
            f"Expected `tokens` to have one entry per input position of the tree ({n}), but got {len(tokens)}."
        )
    return [str(t) for t in tokens]


def _tree_view(graph: Any, labels: list[str]) -> _TreeView:
    """The figure size and the edge colour scale of a checked tree or graph."""
    import matplotlib as mpl
    from matplotlib.colors import ListedColormap, Normalize

    n, n_layers = len(labels), int(graph.graph["n_layers"])
    # plasma without its palest end, so that the weakest edges still show on white
    cmap = ListedColormap(mpl.colormaps.get_cmap("plasma_r")(np.linspace(0.2, 1.0, 256)))
    # the raw attribution, comparable across layers (the normalised score is per layer: a layer's
    # weakest edges can have score 1 while a stronger edge of another layer has a lower one)
    top = max((abs(float(a)) for *_, a in graph.edges(data="attribution")), default=0.0)
    vmin, vmax = 0.0, top if top > 0 else 1.0
    return _TreeView(
        graph=graph,
        labels=labels,
        is_graph=graph.is_multigraph(),
        n_layers=n_layers,
        width=float(np.clip(0.3 * n + 2.5, 5.0, 40.0)),
        height=float(np.clip(0.42 * (n_layers + 1) + 2.4, 3.5, 14.0)),
        cmap=cmap,
        norm=Normalize(vmin=vmin, vmax=vmax),
        vmin=vmin,
        vmax=vmax,
    )


def _default_tree_title(view: _TreeView) -> str:
    """``attribution tree`` or ``graph``, with ``tau`` and the root rule."""
    info = view.graph.graph
    kind = "graph" if view.is_graph else "tree"
    return f"attribution {kind} (tau={float(info.get('tau', 0.0)):g}, root {info.get('root_rule', '?')})"


def _draw_tree_grid(ax: Axes, view: _TreeView) -> None:
    """Faint rows, one per layer, and faint columns, one per input token (in or out of the tree)."""
    for layer in range(view.n_layers + 1):
        ax.axhline(layer, color="0.9", linewidth=0.6, zorder=0)
    for column in range(view.n):
        ax.axvline(column, color="0.93", linewidth=0.6, linestyle=":", zorder=0)


def _tree_layout(graph: Any) -> _TreeLayout:
    """A tree's nodes at ``(token, layer)``; each edge from the child up to the parent."""

    def position(node: int) -> tuple[float, float]:
        return float(node), float(graph.nodes[node]["layer"])

    arrows = [(*position(child), *position(parent), data) for parent, child, data in graph.edges(data=True)]
    nodes = [(*position(v), v) for v in sorted(graph.nodes)]
    return _TreeLayout(arrows=arrows, nodes=nodes, residuals=[])


def _layered_layout(graph: Any) -> _TreeLayout:
    """A graph's layered view: ``(rank, token)`` nodes, layer-``l`` edges from rank ``l`` up to rank ``l + 1``."""
    from lightning_attattr.analysis.trees import layered_dag

    dag = layered_dag(graph)
    arrows = [
        (float(c[1]), float(c[0]), float(p[1]), float(p[0]), d)
        for p, c, d in dag.edges(data=True)
        if d["kind"] == "attention"
    ]
    residuals = [(p, c) for p, c, d in dag.edges(data=True) if d["kind"] == "residual"]
    nodes = sorted((float(token), float(rank), token) for rank, token in dag.nodes)
    return _TreeLayout(arrows=arrows, nodes=nodes, residuals=residuals)


def _draw_tree_edges(ax: Axes, view: _TreeView, layout: _TreeLayout) -> None:
    """The residual links of a graph (faint vertical lines), then one arrow per edge."""
    for high, low in layout.residuals:
        ax.plot([high[1], low[1]], [high[0], low[0]], color="0.75", linewidth=1.0, zorder=1)
    # weakest first, so that the strongest edges are drawn on top
    for x0, y0, x1, y1, data in sorted(layout.arrows, key=lambda arrow: abs(float(arrow[4]["attribution"]))):
        start, end = (x0, y0), (x1, y1)
        arrow = ax.annotate("", xy=end, xytext=start, arrowprops=_arrow_props(view, start, end, data), zorder=2)
        arrow.set_gid(f"edge {int(x0)}->{int(x1)} layer {data['layer']}")  # child -> parent, for tests and SVG


def _arrow_props(
    view: _TreeView, start: tuple[float, float], end: tuple[float, float], data: dict[str, Any]
) -> dict[str, Any]:
    """An edge's arrow style: colour and width by its attribution, bowed within a layer, dashed if not in the tree."""
    value = abs(float(data["attribution"]))
    t = float(np.clip((value - view.vmin) / max(view.vmax - view.vmin, 1e-12), 0.0, 1.0))
    return {
        "arrowstyle": "-|>",
        "color": view.cmap(view.norm(value)),
        "linewidth": 0.8 + 2.2 * t,
        "shrinkA": 4,
        "shrinkB": 5,
        "mutation_scale": 9,
        # same-layer edges (a token attached earlier in the layer is the parent) bow, others are straight
        "connectionstyle": "arc3,rad=0.3" if start[1] == end[1] else "arc3,rad=0.0",
        # in a graph, the edges the one-parent tree drops are dashed
        "linestyle": "-" if not view.is_graph or data.get("in_tree") else (0, (3, 2)),
    }


def _draw_tree_nodes(ax: Axes, view: _TreeView, nodes: list[_Node]) -> None:
    """The nodes, the root as a star, and each node's token label (once per token, on its top row)."""
    xs = [x for x, _, _ in nodes]
    ys = [y for _, y, _ in nodes]
    ax.scatter(xs, ys, s=28, color="tab:blue", edgecolor="black", linewidth=0.5, zorder=3)
    root = view.graph.graph["root"]
    ax.scatter([root], [view.n_layers], s=120, marker="*", color="gold", edgecolor="black", linewidth=0.6, zorder=4)
    label_size = float(np.clip(9.5 - 0.08 * view.n, 6.0, 9.0))
    labelled: set[int] = set()  # a graph's token can sit on several rows: label it once, on its top row
    for x, y, v in sorted(nodes, key=lambda item: (item[0], -item[1])):
        if v in labelled:
            continue
        labelled.add(v)
        ax.annotate(
            view.labels[v],
            (x, y),
            xytext=(3, 4),
            textcoords="offset points",
            fontsize=label_size,
            rotation=30,
            zorder=5,
        )


def _format_tree_axes(ax: Axes, view: _TreeView) -> None:
    """Token ticks (dark and bold in the tree, faint outside), layer ticks, limits and axis labels."""
    n, n_layers = view.n, view.n_layers
    tick_size = _fontsize((view.width - 2.5) / max(n, 1), lo=6.0, hi=9.0)
    ax.set_xticks(range(n), view.labels, rotation=90, fontsize=tick_size)
    for k, tick in enumerate(ax.get_xticklabels()):
        in_tree = k in view.graph
        tick.set_color("black" if in_tree else "0.65")
        tick.set_fontweight("bold" if in_tree else "normal")
    ax.set_yticks(range(n_layers + 1), [f"L{layer}" for layer in range(n_layers)] + ["root"])
    ax.tick_params(axis="y", labelsize=float(np.clip(9 - 0.1 * n_layers, 6, 9)))
    ax.set_xlim(-0.8, n - 0.2)
    ax.set_ylim(-0.7, n_layers + 0.9)
    ax.set_ylabel("layer")
    ax.set_xlabel(
        "arrows: child (key) \u2192 parent (query)" + ("; dashed: not in the tree" if view.is_graph else ""), fontsize=8
    )
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def value_histogram(values: Any, title: str | None = None, bins: int = 50) -> Figure:
    """Histogram of the values of an array (for loggers without a native histogram).

    Args:
        values: a 1-D array-like of numbers.
        title: optional title.
        bins: number of bins.

    Returns:
        The figure (count against value, log-scaled counts).
    """
    arr = as_array("values", values, ("value",))
    title = _check_title(title)
    fig = _new_figure((5.0, 3.0))
    ax = fig.add_subplot(1, 1, 1)
    ax.hist(arr, bins=bins, color="tab:blue", log=True)
    ax.set_xlabel("value")
    ax.set_ylabel("count")
    ax.grid(True, alpha=0.3)
    if title is not None:
        ax.set_title(title)
    return fig
