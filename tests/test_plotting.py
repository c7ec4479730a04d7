import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from lightning_attattr.plotting import figure_to_array, head_grid, importance_heatmap, pruning_curve, token_heatmap

TOKENS = ["[CLS]", "the", "movie", "was", "great", "!", "[SEP]"]


def image_axes(fig):
    """Axes showing an image (colorbar axes hold no AxesImage)."""
    return [ax for ax in fig.axes if ax.images]


def colorbar_axes(fig):
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


def tick_texts(labels):
    return [t.get_text() for t in labels]


def signed_map(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * 0.1 + 0.05  # skewed positive: limits must still be symmetric


# --- token_heatmap ---------------------------------------------------------------------------------


def test_token_heatmap_axes_ticks_and_symmetric_scale():
    attr = signed_map(7, 7)
    fig = token_heatmap(attr, TOKENS, title="layer 3")
    assert isinstance(fig, Figure)
    (ax,) = image_axes(fig)
    assert len(colorbar_axes(fig)) == 1
    assert tick_texts(ax.get_xticklabels()) == TOKENS
    assert tick_texts(ax.get_yticklabels()) == TOKENS
    assert ax.get_title() == "layer 3"
    (im,) = ax.images
    limit = attr.abs().max().item()
    assert im.norm.vmin == pytest.approx(-limit) and im.norm.vmax == pytest.approx(limit)
    np.testing.assert_allclose(im.get_array(), attr.numpy(), rtol=1e-6)
    # rows are queries, top row first (imshow origin "upper")
    assert im.origin == "upper"


def test_token_heatmap_accepts_numpy_bfloat16_and_zeros():
    fig = token_heatmap(np.zeros((3, 3)), ["a", "b", "c"])
    (im,) = image_axes(fig)[0].images
    assert (im.norm.vmin, im.norm.vmax) == (-1.0, 1.0)  # no degenerate scale
    fig = token_heatmap(signed_map(3, 3).to(torch.bfloat16), ["a", "b", "c"])
    assert isinstance(fig, Figure)


def test_token_heatmap_scales_to_64_tokens():
    small = token_heatmap(signed_map(5, 5), list("abcde"))
    tokens = [f"tok{i}" for i in range(64)]
    big = token_heatmap(signed_map(64, 64), tokens)
    assert big.get_size_inches()[1] > small.get_size_inches()[1]
    (ax,) = image_axes(big)
    assert tick_texts(ax.get_xticklabels()) == tokens
    assert all(t.get_rotation() == 90 for t in ax.get_xticklabels())


@pytest.mark.parametrize(
    ("attr", "tokens", "match"),
    [
        (torch.zeros(2, 7, 7), TOKENS, r"`attr` to have shape \[query_pos, key_pos\].*got shape \[2, 7, 7\]"),
        (torch.zeros(7, 6), TOKENS, r"`attr`.*query_pos == key_pos.*got shape \[7, 6\]"),
        (torch.zeros(0, 0), [], r"`attr`.*non-empty.*got shape \[0, 0\]"),
        (torch.zeros(7, 7), TOKENS[:5], r"`tokens` to have one entry per position \(7.*got 5"),
    ],
)
def test_token_heatmap_bad_inputs(attr, tokens, match):
    with pytest.raises(ValueError, match=match):
        token_heatmap(attr, tokens)


def test_token_heatmap_bad_types():
    with pytest.raises(TypeError, match="`tokens` to be a sequence of strings"):
        token_heatmap(torch.zeros(3, 3), "abc")
    with pytest.raises(TypeError, match="`attr`"):
        token_heatmap(object(), ["a"])
    with pytest.raises(TypeError, match="`title`"):
        token_heatmap(torch.zeros(1, 1), ["a"], title=3)


# --- head_grid -------------------------------------------------------------------------------------


def test_head_grid_one_panel_per_head_shared_symmetric_scale():
    attr = signed_map(6, 7, 7)
    fig = head_grid(attr, TOKENS, title="layer 0", max_cols=4, scale="shared")
    axes = image_axes(fig)
    assert len(axes) == 6 and len(fig.axes) == 6 + 1  # unused grid cells removed, one colorbar
    assert [ax.get_title() for ax in axes] == [f"head {h}" for h in range(6)]
    limit = attr.abs().max().item()
    for h, ax in enumerate(axes):
        (im,) = ax.images
        assert im.norm.vmin == pytest.approx(-limit) and im.norm.vmax == pytest.approx(limit)
        np.testing.assert_allclose(im.get_array(), attr[h].numpy(), rtol=1e-6)
    # 2 rows x 4 columns: y labels on the first column, x labels on the lowest panel of each column
    for h, ax in enumerate(axes):
        assert tick_texts(ax.get_yticklabels()) == (TOKENS if h % 4 == 0 else [""] * 7)
        assert tick_texts(ax.get_xticklabels()) == (TOKENS if h + 4 >= 6 else [""] * 7)
    assert fig.get_suptitle() == "layer 0 (attribution, one colour scale)"


@pytest.mark.parametrize("tokens", [None, [f"t{i}" for i in range(25)]])
def test_head_grid_no_ticks_without_short_tokens(tokens):
    fig = head_grid(signed_map(3, 25, 25), tokens, max_cols=2)
    axes = image_axes(fig)
    assert len(axes) == 3
    for ax in axes:
        assert len(ax.get_xticks()) == 0 and len(ax.get_yticks()) == 0


def test_head_grid_bad_inputs():
    with pytest.raises(ValueError, match=r"`attr` to have shape \[head, query_pos, key_pos\].*got shape \[7, 7\]"):
        head_grid(torch.zeros(7, 7))
    with pytest.raises(ValueError, match=r"`tokens` to have one entry per position \(7"):
        head_grid(torch.zeros(2, 7, 7), TOKENS[:3])
    with pytest.raises(ValueError, match="`max_cols` to be a positive integer, but got 0"):
        head_grid(torch.zeros(2, 7, 7), max_cols=0)
    with pytest.raises(TypeError, match="`max_cols`"):
        head_grid(torch.zeros(2, 7, 7), max_cols=2.0)


# --- importance_heatmap ----------------------------------------------------------------------------


def test_importance_heatmap_layer_zero_on_top_and_annotated():
    importance = torch.arange(12.0).reshape(3, 4)  # [layer, head]
    fig = importance_heatmap(importance, title="head importance")
    (ax,) = image_axes(fig)
    assert len(colorbar_axes(fig)) == 1
    (im,) = ax.images
    np.testing.assert_array_equal(im.get_array(), importance.numpy())
    assert im.origin == "upper"
    # y axis inverted: row 0 has the top edge (-0.5) at the top
    bottom, top = ax.get_ylim()
    assert top < bottom and top == pytest.approx(-0.5)
    assert tick_texts(ax.get_yticklabels()) == ["0", "1", "2"]
    assert tick_texts(ax.get_xticklabels()) == ["0", "1", "2", "3"]
    assert sorted(t.get_text() for t in ax.texts) == sorted(f"{v:.2g}" for v in range(12))
    # the text for layer 0, head 1 sits in row 0
    (text,) = [t for t in ax.texts if t.get_text() == "1"]
    assert text.get_position() == (1, 0)
    assert (im.norm.vmin, im.norm.vmax) == (0.0, 11.0)  # non-negative: sequential, data range


def test_importance_heatmap_annotation_default_and_override():
    assert not image_axes(importance_heatmap(torch.rand(24, 16)))[0].texts
    assert image_axes(importance_heatmap(torch.rand(24, 16), annotate=True))[0].texts
    assert not image_axes(importance_heatmap(torch.rand(2, 2), annotate=False))[0].texts


def test_importance_heatmap_signed_is_symmetric_and_layer_labels():
    importance = torch.tensor([[-2.0, 1.0], [0.5, 0.0]])
    fig = importance_heatmap(importance, layers=(4, 7))
    (ax,) = image_axes(fig)
    (im,) = ax.images
    assert (im.norm.vmin, im.norm.vmax) == (-2.0, 2.0)
    assert tick_texts(ax.get_yticklabels()) == ["4", "7"]


def test_importance_heatmap_bad_inputs():
    with pytest.raises(ValueError, match=r"`importance` to have shape \[layer, head\].*got shape \[2, 3, 4\]"):
        importance_heatmap(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match=r"`layers` to have one entry per row of `importance` \(2.*got 3"):
        importance_heatmap(torch.zeros(2, 3), layers=[0, 1, 2])
    with pytest.raises(TypeError, match="`annotate`"):
        importance_heatmap(torch.zeros(2, 3), annotate="yes")


# --- pruning_curve ---------------------------------------------------------------------------------


def test_pruning_curve_one_line_per_method():
    fractions = [0.0, 0.1, 0.2, 0.4]
    curves = {"attattr": [0.9, 0.89, 0.88, 0.8], "taylor": [0.9, 0.87, 0.8, 0.7], "random": torch.tensor([0.9] * 4)}
    fig = pruning_curve(fractions, curves, metric_name="val/acc", title="SST-2")
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    (ax,) = fig.axes
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == list(curves)
    for line, values in zip(lines, curves.values()):
        np.testing.assert_allclose(line.get_xdata(), fractions)
        np.testing.assert_allclose(line.get_ydata(), np.asarray(values, dtype=float))
        assert line.get_marker() not in (None, "None", "")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(curves)
    assert ax.get_ylabel() == "val/acc" and ax.get_title() == "SST-2"
    assert any(line.get_visible() for line in ax.get_xgridlines())


def test_pruning_curve_bad_inputs():
    with pytest.raises(ValueError, match=r"`curves\['taylor'\]` to have one value per fraction.*got shape \[2\]"):
        pruning_curve([0.0, 0.5, 1.0], {"attattr": [1, 2, 3], "taylor": [1, 2]})
    with pytest.raises(ValueError, match="`curves` to contain at least one method"):
        pruning_curve([0.0], {})
    with pytest.raises(ValueError, match=r"`fractions` to be fractions of heads pruned in \[0, 1\]"):
        pruning_curve([0, 50, 100], {"a": [1, 2, 3]})
    with pytest.raises(ValueError, match=r"`fractions` to have shape \[n_points\]"):
        pruning_curve([], {"a": []})
    with pytest.raises(TypeError, match="`curves` to be a mapping"):
        pruning_curve([0.0], [[1.0]])


# --- figure_to_array -------------------------------------------------------------------------------


def test_figure_to_array_shape_and_dtype():
    fig = importance_heatmap(torch.rand(3, 4))
    fig.set_dpi(50)
    arr = figure_to_array(fig)
    width, height = fig.get_size_inches() * fig.dpi
    assert arr.dtype == np.uint8 and arr.shape == (int(height), int(width), 3)
    assert arr.min() < 128 < arr.max()  # something was drawn on the white background
    assert figure_to_array(fig).shape == arr.shape  # repeatable, the figure is left usable


def test_figure_to_array_foreign_canvas_and_bad_type():
    fig = Figure(figsize=(2, 1), dpi=40)  # plain FigureCanvasBase
    fig.add_subplot().plot([0, 1])
    canvas = fig.canvas
    arr = figure_to_array(fig)
    assert arr.shape == (40, 80, 3) and arr.dtype == np.uint8
    assert fig.canvas is canvas  # not replaced
    with pytest.raises(TypeError, match="`fig` to be a matplotlib Figure"):
        figure_to_array(np.zeros((2, 2)))


# --- import hygiene --------------------------------------------------------------------------------


def test_no_pyplot_import():
    code = textwrap.dedent(
        """
        import sys
        import lightning_attattr.plotting as p
        assert "matplotlib" not in sys.modules, "matplotlib imported eagerly"
        import numpy as np
        a = np.random.default_rng(0).normal(size=(2, 3, 3))
        figs = [
            p.token_heatmap(a[0], ["a", "b", "c"]),
            p.head_grid(a, ["a", "b", "c"]),
            p.importance_heatmap(a[:, 0]),
            p.pruning_curve([0.0, 0.5], {"attattr": [1.0, 0.5]}),
        ]
        for fig in figs:
            p.figure_to_array(fig)
        assert "matplotlib.pyplot" not in sys.modules, "pyplot imported"
        """
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=Path(__file__).resolve().parents[1])


def test_figures_are_garbage_collected():
    import gc
    import weakref

    fig = token_heatmap(signed_map(3, 3), ["a", "b", "c"])
    figure_to_array(fig)
    ref = weakref.ref(fig)
    del fig
    gc.collect()
    assert ref() is None  # no global registry (pyplot) keeps it alive


# --- figures that do not mislead -----------------------------------------------------------------


def clipped_tick_labels(fig):
    """Tick labels (non-empty) whose drawn box reaches outside the figure."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    width, height = fig.bbox.width, fig.bbox.height
    out = []
    for ax in fig.axes:
        (x_lo, x_hi), (y_lo, y_hi) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
        labels = [t for t in ax.get_xticklabels() if x_lo <= t.get_position()[0] <= x_hi]
        labels += [t for t in ax.get_yticklabels() if y_lo <= t.get_position()[1] <= y_hi]  # drawn ticks only
        for label in labels:
            if not label.get_text() or not label.get_visible():
                continue
            box = label.get_window_extent(renderer)
            if box.x0 < -0.5 or box.y0 < -0.5 or box.x1 > width + 0.5 or box.y1 > height + 0.5:
                out.append(label.get_text())
    return out


QS_TOKENS = ["[CLS]", "a0", "x", "b1", "y", "z", "[SEP]"]


@pytest.mark.parametrize("n_heads", [1, 2, 4, 12])
def test_head_grid_per_head_scale_and_unclipped_labels(n_heads):
    attr = signed_map(n_heads, 7, 7) * 0.01
    attr[0, 6, 0] = 5.0  # one [SEP] <- [CLS] cell dominating head 0
    attr[-1, 1, 3] = 0.02  # the planted pair, faint in absolute terms
    fig = head_grid(attr, QS_TOKENS, title="layer 1")
    axes = image_axes(fig)
    for h, ax in enumerate(axes):
        (im,) = ax.images
        limit = attr[h].abs().max().item()
        assert im.norm.vmax == pytest.approx(limit) and im.norm.vmin == pytest.approx(-limit)
        assert ax.get_title() == f"head {h} (\u00b1{limit:.2g})"
    # the planted cell of the last head is at full colour there, not washed out by head 0
    if n_heads > 1:
        assert axes[-1].images[0].norm(0.02) == pytest.approx(1.0)
    assert "colour scale per head" in fig.get_suptitle()
    assert len(colorbar_axes(fig)) == n_heads
    assert clipped_tick_labels(fig) == []


def test_head_grid_bad_scale():
    with pytest.raises(ValueError, match="`scale` to be 'head' or 'shared', but got 'layer'"):
        head_grid(torch.zeros(2, 3, 3), scale="layer")


@pytest.mark.parametrize("tokens", [QS_TOKENS, ["[CLS]"] + [f"longtoken{i}" for i in range(30)] + ["[SEP]"]])
def test_token_heatmap_and_layer_maps_labels_not_clipped(tokens):
    from lightning_attattr.plotting import layer_maps

    n = len(tokens)
    assert clipped_tick_labels(token_heatmap(signed_map(n, n), tokens)) == []
    for n_layers in (1, 2, 4):
        fig = layer_maps(signed_map(n_layers, n, n), tokens, list(range(n_layers)), title="example: class 1")
        assert clipped_tick_labels(fig) == []
        assert len(image_axes(fig)) == n_layers


def test_layer_maps_scale_per_layer():
    from lightning_attattr.plotting import layer_maps

    maps = signed_map(2, 3, 3)
    maps[1] *= 100
    fig = layer_maps(maps, ["a", "b", "c"], [4, 5])
    for k, ax in enumerate(image_axes(fig)):
        limit = maps[k].abs().max().item()
        assert ax.images[0].norm.vmax == pytest.approx(limit)
        assert ax.get_title().startswith(f"layer {4 + k} ")
    with pytest.raises(ValueError, match="`layers` to have one entry per map"):
        layer_maps(maps, ["a", "b", "c"], [4])


def colour_pixels(image, rgb, tolerance=12):
    return int((np.abs(image.astype(int) - np.asarray(rgb)[None, None, :]).max(-1) <= tolerance).sum())


def test_pruning_curve_coinciding_curves_all_visible():
    import matplotlib as mpl

    x = np.linspace(0, 1, 11)
    y = np.where(x <= 0.9, 1.0, 0.5)
    names = ["attattr", "attention", "taylor", "gradient", "norm", "random", "entropy", "magnitude"]
    fig = pruning_curve(x, {name: y for name in names})
    (ax,) = fig.axes
    lines = ax.get_lines()
    styles = {(line.get_linestyle(), line.get_marker()) for line in lines}
    assert len(styles) == len(names)  # every curve its own line style and marker
    widths = [line.get_linewidth() for line in lines]
    assert widths == sorted(widths, reverse=True) and len(set(widths)) == len(names)  # bottom widest
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["attattr"] + [f"{name} (= attattr)" for name in names[1:]]
    # every colour is actually visible in the drawn plot (not covered by the later curves)
    fig.legend_ = None
    ax.get_legend().remove()
    image = figure_to_array(fig)
    for line in lines:
        rgb = np.rint(np.asarray(mpl.colors.to_rgb(line.get_color())) * 255)
        assert colour_pixels(image, rgb) > 40, line.get_label()


def test_tree_figure_encodes_the_attribution_not_the_per_layer_score():
    from lightning_attattr.analysis.trees import build_tree
    from lightning_attattr.plotting import tree_figure

    # layer 0: tiny attributions (its own normalised scores reach 1); layer 1: the planted a0 -> b1
    # edge, large, but below other entries of its layer so that its normalised score is lower
    n = 5
    maps = torch.zeros(2, n, n)
    maps[1, 0, 1] = 1.3e-5  # layer 1 (scanned first): tiny, but score 1 in its layer
    maps[1, 0, 4] = 1.2e-5
    maps[0, 1, 2] = 0.2
    maps[0, 1, 3] = 0.131  # the planted a0 -> b1 edge: score 0.655 in its layer
    tree = build_tree(maps, ["[CLS]", "a0", "x", "b1", "[SEP]"], tau=0.4)
    attributions = {(p, c): d["attribution"] for p, c, d in tree.edges(data=True)}
    scores = {(p, c): d["score"] for p, c, d in tree.edges(data=True)}
    assert scores[(1, 3)] < scores[(0, 1)] and attributions[(1, 3)] > attributions[(0, 1)]  # score inverts it
    fig = tree_figure(tree, None)
    (ax,) = [a for a in fig.axes if a.get_label() != "<colorbar>"]
    arrows = {}
    for text in ax.texts:
        gid = text.get_gid()
        if gid and gid.startswith("edge "):
            child, parent = (int(v) for v in gid.split()[1].split("->"))
            arrows[(parent, child)] = text.arrow_patch
    assert set(arrows) == set(attributions)
    by_value = sorted(attributions, key=lambda edge: attributions[edge])
    widths = [arrows[edge].get_linewidth() for edge in by_value]
    assert widths == sorted(widths) and widths[-1] > widths[0]
    darkness = [1 - np.mean(arrows[edge].get_edgecolor()[:3]) for edge in by_value]
    assert darkness == sorted(darkness)
    assert max(attributions, key=attributions.get) == (1, 2)
    colorbar = [a for a in fig.axes if a.get_label() == "<colorbar>"][0]
    assert "attribution" in colorbar.get_ylabel()
    assert colorbar.get_ylim()[1] == pytest.approx(0.2)
