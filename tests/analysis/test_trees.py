import json
import subprocess
import sys

import networkx as nx
import numpy as np
import pytest
import torch

from lightning_attattr.analysis.store import save_figure
from lightning_attattr.analysis.trees import (
    build_tree,
    merge_units,
    render_text,
    to_dot,
    tree_to_json,
    word_units,
    write_graphml,
)
from lightning_attattr.core.checks import ArgumentError
from lightning_attattr.plotting import tree_figure

TOKENS = ["[CLS]", "a", "b", "c", "[SEP]"]


def cls_maps():
    """3 layers, 5 tokens: root children 2 and 4 (last layer), then 2 -> 1 (layer 1), 1 -> 3 (layer 0)."""
    maps = np.zeros((3, 5, 5))
    maps[2, 0] = [0.0, 0.1, 1.0, 0.3, 0.5]  # root row: 2 (1.0) and 4 (0.5) pass, 3 (0.3) does not
    maps[2, 1, 3] = 0.9  # not the root's row: ignored in the last layer
    maps[1, 2, 1] = 0.8  # layer max: normalised to 1.0
    maps[1, 4, 1] = 0.6  # 1 already has a parent by then
    maps[1, 3, 0] = 0.7  # 3 not in the tree yet
    maps[0, 1, 3] = 1.0
    maps[0, 2, 4] = -3.0  # negative: never an edge
    return maps


def edges(graph):
    return sorted((p, c, d["layer"]) for p, c, d in graph.edges(data=True))


def test_cls_tree_on_a_hand_made_example():
    graph = build_tree(cls_maps(), TOKENS)
    assert edges(graph) == [(0, 2, 2), (0, 4, 2), (1, 3, 0), (2, 1, 1)]
    assert graph.graph == {"root": 0, "tau": 0.4, "root_rule": "cls", "n_layers": 3, "n_tokens": 5}
    assert graph.nodes[0] == {"token": "[CLS]", "index": 0, "layer": 3}  # the root has no attribution
    assert graph.nodes[1] == {"token": "a", "index": 1, "layer": 1, "attribution": 0.8}
    assert graph.edges[2, 1] == {"layer": 1, "attribution": 0.8, "score": 1.0}
    assert graph.edges[0, 4]["score"] == 0.5
    assert nx.is_arborescence(graph)


def test_threshold_is_strict():
    maps = np.zeros((1, 3, 3))
    maps[0, 0] = [0.0, 2.0, 0.8]  # 0.8 / 2.0 == 0.4 exactly: not an edge
    assert edges(build_tree(maps)) == [(0, 1, 0)]
    maps[0, 0, 2] = np.nextafter(0.8, 1.0)
    assert edges(build_tree(maps)) == [(0, 1, 0), (0, 2, 0)]
    assert edges(build_tree(maps, tau=1.0)) == []  # only the maximum itself reaches 1.0, and not above


def test_a_token_attached_in_a_layer_is_a_parent_later_in_that_layer():
    maps = np.zeros((2, 5, 5))
    maps[1, 0, 1] = 1.0
    maps[0, 2, 4] = 1.0  # i = 2 comes before 2 is in the tree: skipped
    maps[0, 1, 3] = 1.0  # adds 3
    maps[0, 3, 2] = 1.0  # 3 was just added: adds 2
    assert edges(build_tree(maps)) == [(0, 1, 1), (1, 3, 0), (3, 2, 0)]


@pytest.mark.parametrize(
    ("n_layers", "root"), [(n, r) for n in (1, 2, 5, 24) for r in ("cls", "official") if (n, r) != (1, "official")]
)
def test_one_parent_per_node_and_deterministic_for_any_depth(n_layers, root):
    rng = np.random.default_rng(n_layers)
    maps = rng.normal(size=(n_layers, 9, 9)) ** 3
    maps[-1, 0, 1:] = np.abs(maps[-1]).max() + 1.0  # the root gets children in the "cls" rule
    graph = build_tree(maps, tau=0.3, root=root)
    assert nx.is_arborescence(graph) and graph.graph["n_layers"] == n_layers
    assert all(d <= 1 for _, d in graph.in_degree())
    assert all(0 <= layer < n_layers for *_, layer in graph.edges(data="layer"))
    assert all(a > 0 and s > 0.3 for *_, a in graph.edges(data="attribution") for *_, s in graph.edges(data="score"))
    assert tree_to_json(graph) == tree_to_json(build_tree(torch.tensor(maps), tau=0.3, root=root))
    assert render_text(graph) == render_text(build_tree(maps, tau=0.3, root=root))


def test_deep_models_use_all_their_layers():
    maps = np.zeros((24, 4, 4))
    maps[23, 0, 1] = 1.0
    maps[20, 1, 2] = 1.0  # beyond the official script's hard-coded layer index 10
    maps[0, 2, 3] = 1.0
    assert edges(build_tree(maps)) == [(0, 1, 23), (1, 2, 20), (2, 3, 0)]
    maps[22, 1, 3] = 1.0  # official: children of the top token from layer L-2 = 22
    assert edges(build_tree(maps, root="official")) == [(1, 2, 20), (1, 3, 22)]  # top token 1 (row sum 2)


def official_maps():
    maps = np.zeros((3, 5, 5))
    maps[2, 3, 1] = 10.0  # last layer: makes 3 the top token, but is never an edge
    maps[2, 0, :] = 50.0  # [CLS] row: never the top token
    maps[1, 3, 0] = 1.0  # layer L-2: children of the top token, [CLS] included
    maps[1, 3, 2] = 0.9
    maps[1, 0, 1] = 5.0  # row 0 is left out of the normaliser
    maps[0, 0, 4] = 5.0  # [CLS] is never a parent in the loop
    maps[0, 2, 1] = 1.0
    return maps


def test_official_root_rule():
    graph = build_tree(official_maps(), TOKENS, root="official")
    assert graph.graph["root"] == 3 and graph.nodes[3]["layer"] == 3
    assert edges(graph) == [(2, 1, 0), (3, 0, 1), (3, 2, 1)]
    assert (3, 1) not in graph.edges and 4 not in graph  # last layer unused, [CLS] not a parent
    assert graph.edges[3, 2]["score"] == pytest.approx(0.9)  # normalised by the max of rows 1..n-1
    # the paper's rule on the same maps: [CLS] root, children from the last layer
    assert build_tree(official_maps(), TOKENS).graph["root"] == 0
    with pytest.raises(ArgumentError, match="at least 2 layers for root='official'"):
        build_tree(np.ones((1, 3, 3)), root="official")


@pytest.mark.parametrize("root", ["cls", "official"])
@pytest.mark.parametrize("fill", [0.0, -1.0])
def test_nothing_above_tau_gives_the_root_alone(root, fill):
    graph = build_tree(np.full((3, 4, 4), fill), root=root)
    assert graph.number_of_nodes() == 1 and graph.number_of_edges() == 0
    assert render_text(graph).count("\n") == 0
    assert tree_to_json(graph)["edges"] == []


def test_exports(tmp_path):
    tokens = ["[CLS]", '"<b>', "a\\b", "x\ny", "&"]
    maps = np.zeros((2, 5, 5))
    maps[1, 0, 1:] = 1.0
    graph = build_tree(maps, tokens)

    data = tree_to_json(graph)
    assert json.loads(json.dumps(data)) == data
    assert data["root"] == 0 and data["tau"] == 0.4 and data["rule"] == "cls" and data["n_layers"] == 2
    assert data["nodes"][0] == {"index": 0, "token": "[CLS]", "layer": 2, "attribution": None}
    assert data["edges"][0] == {"parent": 0, "child": 1, "layer": 1, "attribution": 1.0, "score": 1.0}

    path = write_graphml(graph, tmp_path / "tree.graphml")
    back = nx.read_graphml(path)
    assert sorted(back.edges) == [("0", "1"), ("0", "2"), ("0", "3"), ("0", "4")]
    assert back.nodes["1"]["token"] == '"<b>' and back.nodes["3"]["token"] == "x\ny"
    assert back.nodes["0"]["layer"] == 2 and "attribution" not in back.nodes["0"]
    assert back.edges["0", "2"]["score"] == 1.0 and back.graph["root_rule"] == "cls"

    dot = to_dot(graph)
    assert dot.startswith("digraph attribution_tree {") and dot.endswith("}\n")
    assert 'n1 [label="\\"&lt;b&gt; #1"];' in dot
    assert 'n2 [label="a\\\\b #2"];' in dot
    assert 'n3 [label="x\\ny #3"];' in dot
    assert 'n4 [label="&amp; #4"];' in dot
    assert "n0 -> n1" in dot and len(dot.splitlines()) == 3 + 5 + 4 + 1  # no raw newline inside a label


def test_render_text():
    text = render_text(build_tree(cls_maps(), TOKENS))
    assert text == (
        "[CLS] #0 (root)\n"
        "├── b #2  layer 2  attr 1\n"
        "│   └── a #1  layer 1  attr 0.8\n"
        "│       └── c #3  layer 0  attr 1\n"
        "└── [SEP] #4  layer 2  attr 0.5"
    )


def test_merge_units_sums_and_joins_pieces():
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(3, 5, 5))
    merged, words = merge_units(maps, ["[CLS]", "play", "##ing", "##s", "[SEP]"], [0, 1, 1, 1, 2])
    assert words == ["[CLS]", "playings"] + ["[SEP]"] and merged.shape == (3, 3, 3)
    np.testing.assert_allclose(merged.sum((1, 2)), maps.sum((1, 2)))  # per-layer totals preserved
    np.testing.assert_allclose(merged[:, 1, 1], maps[:, 1:4, 1:4].sum((1, 2)))
    np.testing.assert_allclose(merged[:, 0, 1], maps[:, 0, 1:4].sum(1))

    tensor = torch.tensor(maps, dtype=torch.float32)
    merged_t, words_t = merge_units(tensor, ["<s>", "Ġplay", "ing", "▁x", "</s>"], [7, 8, 8, 9, 10])
    assert isinstance(merged_t, torch.Tensor) and merged_t.dtype == torch.float32
    assert words_t == ["<s>", "playing", "x", "</s>"]
    torch.testing.assert_close(merged_t.sum((1, 2)), tensor.sum((1, 2)))
    assert merge_units(maps[:, None], TOKENS, [0, 1, 1, 2, 3])[0].shape == (3, 1, 4, 4)  # [layer, head, u, u]

    with pytest.raises(ArgumentError, match="`units` to give each unit one contiguous run"):
        merge_units(maps, TOKENS, [0, 1, 0, 2, 3])
    with pytest.raises(ArgumentError, match="`units` to be a list of 5 unit ids"):
        merge_units(maps, TOKENS, [0, 1])


def test_word_units_with_a_pair():
    word_ids = [None, 0, 1, 1, None, 0, 0, 1, None]
    sequence_ids = [None, 0, 0, 0, None, 1, 1, 1, None]
    assert word_units(word_ids, sequence_ids) == [0, 1, 2, 2, 3, 4, 4, 5, 6]
    assert word_units([0, 0], [0, 1]) == [0, 1]  # word 0 of segment A is not word 0 of segment B
    assert word_units([None, None, 0, 0]) == [0, 1, 2, 2]  # special tokens are each their own unit
    with pytest.raises(ArgumentError, match="`sequence_ids`"):
        word_units([None, 0], [None])


def test_tree_figure_40_tokens_and_root_only(tmp_path):
    rng = np.random.default_rng(1)
    n = 40
    tokens = ["[CLS]"] + [f"word{i}" for i in range(1, n - 1)] + ["[SEP]"]
    maps = rng.normal(size=(4, n, n)) ** 3
    maps[-1, 0, 1:6] = np.abs(maps).max()
    graph = build_tree(maps, tokens)
    assert graph.number_of_edges() > 5
    fig = tree_figure(graph, tokens, title="forty tokens")
    assert fig.get_size_inches()[0] > 10  # widens with the input
    paths = save_figure(fig, tmp_path / "tree")
    assert [p.name for p in paths] == ["tree.png", "tree.svg"] and all(p.stat().st_size > 1000 for p in paths)
    root_only = build_tree(np.zeros((2, 3, 3)))
    assert all(p.stat().st_size > 0 for p in save_figure(tree_figure(root_only, None), tmp_path / "root"))
    with pytest.raises(ArgumentError, match="`tokens`"):
        tree_figure(graph, tokens[:-1])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"tau": 0}, r"Expected `tau` to be a number in \(0, 1\], but got 0\."),
        ({"tau": 1.5}, r"Expected `tau` to be a number in \(0, 1\], but got 1\.5\."),
        ({"root": "x"}, r"Expected `root` to be one of \['cls', 'official'\], but got 'x'\."),
        ({"tokens": ["a", "b"]}, r"Expected `tokens` to have one entry per position of `maps` \(3\), but got 2\."),
        ({"maps": np.zeros((2, 3, 4))}, r"Expected `maps` to have shape \[layer, query_pos, key_pos\]"),
        ({"maps": np.zeros((3, 3))}, r"`maps`.*but got shape \[3, 3\]"),
    ],
)
def test_bad_arguments(kwargs, match):
    arguments = {"maps": np.ones((2, 3, 3)), **kwargs}
    with pytest.raises(ValueError, match=match):
        build_tree(**arguments)


def test_trees_do_not_import_lightning():
    code = "import sys, lightning_attattr.analysis.trees; print(*sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    roots = {name.split(".")[0] for name in out.stdout.split()}
    assert "lightning_attattr" in roots and not roots & {"lightning", "pytorch_lightning", "matplotlib"}
