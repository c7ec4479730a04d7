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
    fig = head_grid(attr, TOKENS, title="layer 0", max_cols=4)
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
    assert fig.get_suptitle() == "layer 0"


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
