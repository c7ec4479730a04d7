import json
import subprocess
import sys

import networkx as nx
import numpy as np
import pytest
import torch

from lightning_attattr.analysis.store import save_figure
from lightning_attattr.analysis.trees import (
    build_graph,
    build_tree,
    connects,
    layered_dag,
    merge_units,
    render_text,
    to_dot,
    tree_from_json,
    tree_to_json,
    units_from_tokens,
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
    assert graph.graph == {"root": 0, "tau": 0.4, "root_rule": "cls", "n_layers": 3, "n_tokens": 5, "mode": "tree"}
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


# ----------------------------------------------------------------------------- the graph mode
def sibling_maps():
    """[CLS] gathers from "a" and "b" in the last layer; "a" <- "b" in layer 1, "b" <- "c" in layer 0."""
    maps = np.zeros((3, 5, 5))
    maps[2, 0, 1] = 1.0
    maps[2, 0, 2] = 0.9
    maps[1, 1, 2] = 0.8  # "a" gathers from "b": both hang from [CLS] already, so the tree cannot take it
    maps[1, 4, 3] = 1.0  # [SEP] is not in: its row is never read (but it sets the layer's maximum)
    maps[1, 2, 2] = 0.7  # a self-connection: never an edge
    maps[0, 2, 3] = 0.5  # "c" has no parent yet: in the tree and in the graph
    maps[0, 3, 0] = 0.45  # into the root: only the graph keeps it
    maps[0, 4, 1] = 1.0  # [SEP] again
    return maps


def multi_edges(graph):
    return sorted((p, c, d["layer"], d["in_tree"]) for p, c, d in graph.edges(data=True))


def test_the_graph_keeps_the_edge_that_the_one_parent_rule_drops():
    tree, graph = build_tree(sibling_maps(), TOKENS), build_graph(sibling_maps(), TOKENS)
    assert edges(tree) == [(0, 1, 2), (0, 2, 2), (2, 3, 0)]
    assert multi_edges(graph) == [(0, 1, 2, True), (0, 2, 2, True), (1, 2, 1, False), (2, 3, 0, True), (3, 0, 0, False)]
    assert graph.edges[1, 2, 1] == {"layer": 1, "attribution": 0.8, "score": 0.8, "in_tree": False}
    assert dict(graph.nodes(data=True)) == dict(tree.nodes(data=True))  # the same tokens, the same attributes
    assert graph.graph == {**tree.graph, "mode": "graph"}
    # the planted-pair test, one function for both
    assert not connects(tree, (1, 2)) and not connects(tree, (2, 1))
    assert connects(graph, (1, 2)) and connects(graph, (2, 1))
    assert connects(graph, (2, 1), layer=1) and not connects(graph, (1, 2), layer=0)
    assert connects(tree, (3, 2)) and connects(tree, (2, 3), layer=0) and not connects(tree, (2, 3), layer=1)
    assert not connects(graph, (2, 2)) and not connects(graph, (1, 4))


@pytest.mark.parametrize(
    ("n_layers", "root"), [(n, r) for n in (1, 2, 5, 12) for r in ("cls", "official") if (n, r) != (1, "official")]
)
def test_the_graph_holds_the_tree_and_every_candidate_edge_of_its_tokens(n_layers, root):
    rng = np.random.default_rng(10 + n_layers)
    maps = rng.normal(size=(n_layers, 9, 9)) ** 3
    maps[-1, 0, 1:] = np.abs(maps[-1]).max() + 1.0
    tree, graph = build_tree(maps, tau=0.3, root=root), build_graph(maps, tau=0.3, root=root)
    assert isinstance(graph, nx.MultiDiGraph) and set(graph.nodes) == set(tree.nodes)
    in_tree = {(p, c, d["layer"]) for p, c, d in graph.edges(data=True) if d["in_tree"]}
    assert in_tree == set(edges(tree))  # the tree edges, and only they, are marked
    assert all(p != c for p, c in graph.edges()) and all(s > 0.3 for *_, s in graph.edges(data="score"))
    for parent, child, layer in ((p, c, d["layer"]) for p, c, d in graph.edges(data=True)):
        assert connects(graph, (child, parent), layer=layer)
    # nothing left out: every candidate connection between two graph tokens whose query is in above the layer
    top = n_layers - 1 if root == "cls" else n_layers - 2
    for layer in range(top):
        norm = maps[layer] / (maps[layer].max() if root == "cls" else abs(maps[layer][1:].max()))
        for i in range(0 if root == "cls" else 1, 9):
            reached_above = i == graph.graph["root"] or graph.nodes.get(i, {}).get("layer", -1) > layer
            for j in range(9):
                if reached_above and i != j and norm[i, j] > 0.3:
                    assert graph.has_edge(i, j, key=layer), (layer, i, j)
    assert nx.is_directed_acyclic_graph(layered_dag(graph)) and nx.is_directed_acyclic_graph(layered_dag(tree))
    assert tree_to_json(graph) == tree_to_json(build_graph(torch.tensor(maps), tau=0.3, root=root))


def test_layered_dag_ranks():
    dag = layered_dag(build_graph(sibling_maps(), TOKENS))
    attention = sorted((u, v) for u, v, k in dag.edges(data="kind") if k == "attention")
    # an edge of layer l goes from the query on rank l + 1 to the key on rank l
    assert attention == [((1, 2), (0, 3)), ((1, 3), (0, 0)), ((2, 1), (1, 2)), ((3, 0), (2, 1)), ((3, 0), (2, 2))]
    residual = sorted((u, v) for u, v, k in dag.edges(data="kind") if k == "residual")
    assert residual == [((1, 3), (0, 3)), ((2, 2), (1, 2)), ((3, 0), (0, 0))]  # one token's rows, chained downwards
    assert dag.nodes[(2, 1)] == {"rank": 2, "index": 1, "token": "a"}
    assert list(layered_dag(build_graph(np.zeros((2, 3, 3)))).nodes) == [(2, 0)]  # the root alone


def test_graph_exports_round_trip(tmp_path):
    tokens = ["[CLS]", '"<b>', "a\\b", "x\ny", "&"]
    graph = build_graph(sibling_maps(), tokens)
    data = tree_to_json(graph)
    assert json.loads(json.dumps(data)) == data and data["mode"] == "graph"
    assert data["edges"][0] == {"parent": 0, "child": 1, "layer": 2, "attribution": 1.0, "score": 1.0, "in_tree": True}
    assert [(e["parent"], e["child"], e["layer"]) for e in data["edges"]] == [
        (0, 1, 2),
        (0, 2, 2),
        (1, 2, 1),
        (2, 3, 0),
        (3, 0, 0),
    ]
    back = tree_from_json(json.loads(json.dumps(data)))
    assert isinstance(back, nx.MultiDiGraph) and tree_to_json(back) == data
    assert multi_edges(back) == multi_edges(graph) and dict(back.nodes(data=True)) == dict(graph.nodes(data=True))
    tree = build_tree(sibling_maps(), tokens)
    assert tree_to_json(tree)["mode"] == "tree" and "in_tree" not in tree_to_json(tree)["edges"][0]
    assert tree_to_json(tree_from_json(tree_to_json(tree))) == tree_to_json(tree)
    assert tree_from_json({**tree_to_json(tree), "name": "x"}).graph == tree.graph  # extra keys are ignored

    read = nx.read_graphml(write_graphml(graph, tmp_path / "graph.graphml"), force_multigraph=True)
    assert sorted((u, v, d["layer"], d["in_tree"]) for u, v, d in read.edges(data=True)) == [
        (str(p), str(c), layer, flag) for p, c, layer, flag in multi_edges(graph)
    ]
    assert read.graph["mode"] == "graph" and read.nodes["1"]["token"] == '"<b>' and read.nodes["3"]["token"] == "x\ny"
    assert nx.read_graphml(write_graphml(tree, tmp_path / "tree.graphml")).graph["mode"] == "tree"

    dot = to_dot(graph)
    assert dot.startswith("digraph attribution_graph {") and dot.endswith("}\n")
    assert '{ rank=same; r2; n1_r2 [label="\\"&lt;b&gt; #1"]; n2_r2 [label="a\\\\b #2"]; }' in dot
    assert 'n1_r2 -> n2_r1 [label="L1 0.80", penwidth=2.60, style=dashed];' in dot  # not a tree edge
    assert 'n2_r1 -> n3_r0 [label="L0 0.50", penwidth=2.00];' in dot
    assert "n0_r3 -> n0_r0 [style=dotted" in dot and "r3 -> r2 -> r1 -> r0 [style=invis];" in dot
    assert to_dot(tree).startswith("digraph attribution_tree {")


def test_render_text_of_a_graph():
    assert render_text(build_graph(sibling_maps(), TOKENS)) == (
        "[CLS] #0 (root): 5 edges, 2 not in the tree (marked +); parent <- child\n"
        "layer 2\n"
        "  [CLS] #0 <- a #1  attr 1\n"
        "  [CLS] #0 <- b #2  attr 0.9\n"
        "layer 1\n"
        "+ a #1 <- b #2  attr 0.8\n"
        "layer 0\n"
        "  b #2 <- c #3  attr 0.5\n"
        "+ c #3 <- [CLS] #0  attr 0.45"
    )
    root_only = "0 #0 (root): 0 edges, 0 not in the tree (marked +); parent <- child"
    assert render_text(build_graph(np.zeros((2, 3, 3)))) == root_only


def test_graph_on_words_and_its_figure(tmp_path):
    pieces = ["[CLS]", "un", "##believ", "##able", "film", "[SEP]"]
    maps = np.zeros((2, 6, 6))
    maps[1, 0, 1] = maps[1, 0, 4] = 1.0  # [CLS] gathers from "un" and "film"
    maps[0, 4, 2] = maps[0, 4, 3] = 0.5  # "film" gathers from the rest of "unbelievable"
    merged, words = merge_units(maps, pieces, units_from_tokens(pieces))
    assert words == ["[CLS]", "unbelievable", "film", "[SEP]"]
    graph = build_graph(merged, words)
    assert multi_edges(graph) == [(0, 1, 1, True), (0, 2, 1, True), (2, 1, 0, False)] and connects(graph, (1, 2))
    assert not connects(build_tree(merged, words), (1, 2))
    paths = save_figure(tree_figure(graph, words), tmp_path / "graph")
    assert all(p.stat().st_size > 1000 for p in paths)
    fig = tree_figure(graph, None)
    assert fig.axes[0].get_title().startswith("attribution graph") and "dashed" in fig.axes[0].get_xlabel()


@pytest.mark.parametrize(
    ("pair", "layer", "match"),
    [
        (
            (1, 5),
            None,
            r"^Expected `pair` to be two token positions in \[0, 4\] \(the graph's 5 positions\), but got \(1, 5",
        ),
        ((1,), None, r"^Expected `pair` to be two token positions in \[0, 4\].*but got \(1,\)\.$"),
        (("1", 2), None, r"^Expected `pair`.*but got \('1', 2\)\.$"),
        ((True, 2), None, r"^Expected `pair`.*but got \(True, 2\)\.$"),
        ((1, 2), 3, r"^Expected `layer` to be an integer in \[0, 2\], but got 3\.$"),
    ],
)
def test_connects_errors_are_one_line(pair, layer, match):
    with pytest.raises(ValueError, match=match):
        connects(build_graph(sibling_maps()), pair, layer=layer)
    with pytest.raises(TypeError, match="`graph` to be an attribution tree or graph"):
        connects(nx.DiGraph(), (0, 1))
    with pytest.raises(ValueError, match=r"^Expected `mode` to be one of \['tree', 'graph'\], but got 'dag'\.$"):
        tree_from_json({**tree_to_json(build_tree(sibling_maps())), "mode": "dag"})
