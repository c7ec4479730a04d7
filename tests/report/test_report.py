"""The report page without a browser: data, precision, escaping, size, sections and errors."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_attattr.analysis.trees import build_graph, build_tree, tree_to_json
from lightning_attattr.core.checks import ArgumentError, DataFileError
from lightning_attattr.report import Report, build_report
from lightning_attattr.report.data import decode_array, load_report_data, quantise
from lightning_attattr.report.page import json_for_script
from tests.report import (
    INJECTION_TOKENS,
    tokens_of,
    write_attribute_folder,
    write_model_folders,
    write_tree_folder,
)

DATA_BLOCK = re.compile(r'<script type="application/json" id="report-data">(.*?)</script>', re.S)


def data_block(page: str) -> dict:
    blocks = DATA_BLOCK.findall(page)
    assert len(blocks) == 1
    return json.loads(blocks[0])


@pytest.fixture
def injection_folder(tmp_path: Path) -> tuple[Path, dict]:
    tokens = tokens_of(12, INJECTION_TOKENS)
    payloads = write_attribute_folder(
        tmp_path / "attr",
        [
            {"name": "ex0", "tokens": tokens, "n_layers": 3, "n_heads": 4},
            {"name": "ex1", "tokens": tokens_of(7), "n_layers": 3, "n_heads": 4, "attention": False, "label": None},
        ],
    )
    return tmp_path / "attr", payloads


def test_page_is_self_contained(injection_folder):
    page = build_report(injection_folder[0]).html
    assert 'src="http' not in page and "src='http" not in page
    assert 'href="http' not in page and "href='http" not in page
    assert "<link" not in page and "<script src" not in page and "@import" not in page
    assert "Content-Security-Policy" in page and "default-src &#x27;none&#x27;" in page
    assert page.count("<script") == 2  # the data block and the inlined script, nothing else


def test_data_block_round_trips_tokens_exactly(injection_folder):
    folder, payloads = injection_folder
    page = build_report(folder).html
    data = data_block(page)
    assert [e["tokens"] for e in data["examples"]] == [payloads["ex0"]["tokens"], payloads["ex1"]["tokens"]]
    assert data["examples"][0]["tokens"][1:9] == INJECTION_TOKENS
    block = DATA_BLOCK.findall(page)[0]
    for char in "<>&\u2028\u2029":
        assert char not in block


def test_injection_strings_never_appear_raw(injection_folder):
    page = build_report(injection_folder[0]).html
    assert page.count("</script>") == 2  # closing the two script elements only
    assert '"<b>' not in page and "<b>" not in page
    assert "&amp;" not in page  # the token is JSON-escaped, never HTML text
    assert "<img" not in page
    assert "<!--" not in page


def test_json_for_script_escapes():
    text = json_for_script({"t": "</script><!-- & \u2028\u2029 é"})
    assert text == '{"t":"\\u003c/script\\u003e\\u003c!-- \\u0026 \\u2028\\u2029 \\u00e9"}'
    assert json.loads(text) == {"t": "</script><!-- & \u2028\u2029 é"}
    with pytest.raises(ValueError):
        json_for_script({"x": float("nan")})


@pytest.mark.parametrize("sparse", [False, True])
def test_quantisation_error_bound(sparse):
    gen = torch.Generator().manual_seed(1)
    maps = torch.randn(3, 4, 9, 9, generator=gen).double()
    if sparse:  # mostly zeros, as real maps: deflated
        maps = maps * (torch.rand(3, 4, 9, 9, generator=gen) > 0.9)
    maps[1, 2] = 0.0  # an all-zero map stays exact
    packed = quantise(maps)
    assert packed["encoding"] == ("int8-deflate" if sparse else "int8")
    assert len(packed["scales"]) == 12
    decoded = decode_array(packed)
    assert decoded.shape == (3, 4, 9, 9)
    peak = maps.abs().amax((-2, -1), keepdim=True).numpy()
    assert (np.abs(decoded - maps.numpy()) <= peak / 254 + 1e-12).all()
    assert (decoded[1, 2] == 0).all()
    # each map's largest magnitude is +-127 * scale: kept up to float rounding
    assert np.allclose(np.abs(decoded).reshape(12, -1).max(1), maps.abs().reshape(12, -1).amax(1).numpy())


def test_quantise_rejects_non_square():
    with pytest.raises(ArgumentError, match="`maps`"):
        quantise(np.zeros((2, 3)))


def test_example_maps_and_tree(injection_folder):
    folder, payloads = injection_folder
    data = load_report_data(folder)
    ex0, ex1 = data["examples"]
    attributions = payloads["ex0"]["attributions"].double()  # [layer, head, q, k]
    decoded = decode_array(ex0["attributions"])
    peak = attributions.abs().amax((-2, -1), keepdim=True).numpy()
    assert np.all(np.abs(decoded - attributions.numpy()) <= peak / 254 + 1e-9)
    summed = attributions.sum(1)  # [layer, q, k], summed in float before quantising
    assert np.all(
        np.abs(decode_array(ex0["summed"]) - summed.numpy())
        <= summed.abs().amax((-2, -1), keepdim=True).numpy() / 254 + 1e-9
    )
    attention = payloads["ex0"]["attention"].double()
    assert np.abs(decode_array(ex0["attention"]) - attention.numpy()).max() <= 1 / 254 + 1e-9
    assert ex0["tree"] == tree_to_json(build_tree(summed, payloads["ex0"]["tokens"], tau=0.4))
    assert ex0["tree"]["edges"]  # the planted [CLS] -> first word edge
    assert ex0["key"] == "ex0" and ex0["layers"] == [0, 1, 2] and ex0["n_heads"] == 4
    assert ex0["label"] == 1 and ex0["predicted"] == payloads["ex0"]["predicted"]
    assert ex0["completeness_error"] == pytest.approx(payloads["ex0"]["completeness_error"])
    assert ex1["attention"] is None and ex1["label"] is None


def test_example_graph_and_completeness(injection_folder):
    """The graph beside the tree (edges as rows, 4 significant digits) and the worst completeness error."""
    folder, payloads = injection_folder
    ex0 = load_report_data(folder)["examples"][0]
    summed = payloads["ex0"]["attributions"].double().sum(1)  # [layer, q, k]
    graph = tree_to_json(build_graph(summed, payloads["ex0"]["tokens"], tau=0.4))
    assert {k: ex0["graph"][k] for k in ("mode", "tau", "n_layers", "root")} == {
        "mode": "graph",
        "tau": 0.4,
        "n_layers": 3,
        "root": 0,
    }
    rows = ex0["graph"]["edges"]
    assert [r[:3] + [r[5]] for r in rows] == [
        [e["parent"], e["child"], e["layer"], int(e["in_tree"])] for e in graph["edges"]
    ]
    for row, edge in zip(rows, graph["edges"]):
        assert row[3] == pytest.approx(edge["attribution"], rel=1e-3) and row[4] == pytest.approx(
            edge["score"], rel=1e-3
        )
    tree_edges = {(e["parent"], e["child"], e["layer"]) for e in ex0["tree"]["edges"]}
    assert {tuple(r[:3]) for r in rows if r[5]} == tree_edges and len(rows) > len(tree_edges)  # random maps: extras
    errors = payloads["ex0"]["completeness_error"]
    assert ex0["max_completeness_error"] == pytest.approx(max(errors))
    assert ex0["max_completeness_error_layer"] == errors.index(max(errors))


def test_repr_html_is_an_escaped_iframe(injection_folder):
    report = build_report(injection_folder[0])
    frame = report._repr_html_()
    match = re.fullmatch(
        r'<iframe srcdoc="([^"]*)" sandbox="allow-scripts" style="([^"]*)" title="[^"]*"></iframe>', frame
    )
    assert match, frame[:200]
    assert html.unescape(match.group(1)) == report.html
    assert "<" not in match.group(1) and ">" not in match.group(1)
    assert "width: 100%" in match.group(2) and "height: 900px" in match.group(2)


def test_save_default_and_custom_path(injection_folder, tmp_path):
    folder = injection_folder[0]
    report = build_report(folder)
    path = report.save()
    assert path == folder / "report.html"
    assert path.read_text(encoding="utf-8") == report.html
    other = report.save(tmp_path / "elsewhere.html")
    assert other.read_bytes() == path.read_bytes()
    assert not list(folder.glob(".*.tmp")) and "Report(" in repr(report)
    assert isinstance(report, Report)


def test_large_example_page_size(tmp_path):
    write_attribute_folder(
        tmp_path / "big", [{"name": "long", "tokens": tokens_of(128), "n_layers": 12, "n_heads": 12}]
    )
    page = build_report(tmp_path / "big").html
    size = len(page.encode("utf-8"))
    print(f"\n128-token, 12 x 12-head example with attention: {size / 1e6:.2f} MB page")
    # two int8 arrays of 12*12*128*128 bytes in base64 (random maps do not deflate) plus the head sums
    assert size < 7_000_000
    data = data_block(page)
    assert data["examples"][0]["attributions"]["shape"] == [12, 12, 128, 128]
    without = build_report(tmp_path / "big", include_attention=False).html
    assert len(without.encode("utf-8")) < 3_600_000


def test_model_sections(tmp_path):
    folders = write_model_folders(tmp_path)
    data = load_report_data(tmp_path)
    kinds = sorted(s["kind"] for s in data["sections"])
    assert kinds == sorted(folders)
    heads = next(s for s in data["sections"] if s["kind"] == "heads")
    assert heads["folder"] == "toy-heads" and heads["subcommand"] == "heads"
    assert set(heads["data"]["importance"]["methods"]) == {"attattr", "taylor"}  # per-seed random maps left out
    assert heads["data"]["pruning"]["curves"]["random"]["acc_min"][1] == 0.78
    attack = next(s for s in data["sections"] if s["kind"] == "attack")["data"]
    assert attack["triggers"][0] == {
        "text": "no nonsense",
        "tokens": ["no", "nonsense"],
        "layer": 1,
        "head": 2,
        "score": 0.19,
        "example": 3,
    }
    assert "patterns" not in attack
    assert data["examples"] == []
    page = build_report(tmp_path).html
    assert data_block(page)["sections"] == data["sections"]


def test_model_sections_in_the_folder_itself(tmp_path):
    folders = write_model_folders(tmp_path)
    data = load_report_data(folders["faithfulness"])
    assert [s["kind"] for s in data["sections"]] == ["faithfulness"]
    assert data["sections"][0]["data"]["curves"]["attattr"]["drop"] == [0.1, 0.2, 0.3, 0.4]


def test_examples_and_sections_together(tmp_path):
    write_model_folders(tmp_path)
    write_attribute_folder(tmp_path / "sst2-attr", [{"name": "a", "tokens": tokens_of(6), "n_layers": 3, "n_heads": 4}])
    data = load_report_data(tmp_path)
    assert [e["key"] for e in data["examples"]] == ["sst2-attr/a"]
    assert len(data["sections"]) == 5


def test_max_examples(tmp_path):
    specs = [{"name": f"e{k}", "tokens": tokens_of(5), "n_layers": 2, "n_heads": 2} for k in range(4)]
    write_attribute_folder(tmp_path, specs)
    data = load_report_data(tmp_path, max_examples=2)
    assert [e["name"] for e in data["examples"]] == ["e0", "e1"] and data["n_examples_total"] == 4
    assert len(load_report_data(tmp_path, max_examples=None)["examples"]) == 4
    with pytest.raises(ArgumentError, match="`max_examples`"):
        load_report_data(tmp_path, max_examples=-1)


def test_subset_of_layers(tmp_path):
    write_attribute_folder(
        tmp_path, [{"name": "a", "tokens": tokens_of(6), "n_layers": 2, "n_heads": 2, "layers": [4, 5]}]
    )
    example = load_report_data(tmp_path)["examples"][0]
    assert example["layers"] == [4, 5] and example["tree"]["n_layers"] == 2


def test_empty_or_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ArgumentError, match=r"Expected `results_dir` .* to hold results of analyze\.py"):
        build_report(tmp_path)
    (tmp_path / "notes.txt").write_text("nothing to see")
    (tmp_path / "sub").mkdir()
    with pytest.raises(ArgumentError, match="`results_dir`"):
        build_report(tmp_path)
    with pytest.raises(ArgumentError, match="`results_dir` to be an existing results folder"):
        build_report(tmp_path / "missing")


def test_broken_example_file(tmp_path):
    write_attribute_folder(tmp_path, [{"name": "a", "tokens": tokens_of(6), "n_layers": 2, "n_heads": 2}])
    payload = torch.load(tmp_path / "examples" / "a.pt", weights_only=True)
    payload["tokens"] = payload["tokens"][:-1]
    torch.save(payload, tmp_path / "examples" / "a.pt")
    with pytest.raises(DataFileError, match=r"a\.pt.*\[layer, head, 5, 5\]"):
        build_report(tmp_path)
    (tmp_path / "examples" / "a.pt").write_bytes(b"not a torch file")
    with pytest.raises(DataFileError, match=r"a\.pt"):
        build_report(tmp_path)
    (tmp_path / "attributions.json").write_text("{not json")
    with pytest.raises(DataFileError, match="attributions.json"):
        build_report(tmp_path)


def test_folder_name_is_escaped(tmp_path):
    folder = tmp_path / 'x<b>&"y'
    write_attribute_folder(folder, [{"name": "a", "tokens": tokens_of(5), "n_layers": 1, "n_heads": 1}])
    page = build_report(folder).html
    assert "<b>" not in page
    assert "<title>AttAttr report: x&lt;b&gt;&amp;&quot;y</title>" in page
    assert data_block(page)["title"] == 'x<b>&"y'


def test_nested_folders_included_and_skipped_listed(tmp_path):
    """Results folders at any depth are reported; folders with other results are listed as not shown."""
    folders = write_model_folders(tmp_path / "qs" / "deep")
    write_attribute_folder(
        tmp_path / "qs" / "attr", [{"name": "a", "tokens": tokens_of(6), "n_layers": 2, "n_heads": 2}]
    )
    write_tree_folder(tmp_path / "qs" / "tree", [{"name": "t", "tokens": tokens_of(6), "n_layers": 2}])
    other = tmp_path / "qs" / "other"
    other.mkdir()
    (other / "scores.json").write_text("{}")
    (other / "summary.json").write_text("{}")
    data = load_report_data(tmp_path)
    assert sorted(s["kind"] for s in data["sections"]) == sorted([*folders, "trees"])
    assert {s["folder"] for s in data["sections"]} == {f"qs/deep/{p.name}" for p in folders.values()} | {"qs/tree"}
    assert [e["key"] for e in data["examples"]] == ["qs/attr/a"]
    assert data["included"] == ["qs/attr"] + sorted(f"qs/deep/{p.name}" for p in folders.values()) + ["qs/tree"]
    assert data["skipped"] == [
        {"folder": "qs/other", "reason": "no results the report shows (scores.json, summary.json)"}
    ]
    page = build_report(tmp_path).html
    assert data_block(page)["skipped"] == data["skipped"]


def test_faithfulness_ground_truth_is_shown(tmp_path):
    folders = write_model_folders(tmp_path)
    truth = {"n_examples": 500, "hit": "a top edge joins the planted pair", "methods": {"attattr": {"hit@1": 0.93}}}
    (folders["faithfulness"] / "groundtruth.json").write_text(json.dumps(truth))
    section = next(s for s in load_report_data(tmp_path)["sections"] if s["kind"] == "faithfulness")
    assert section["data"]["groundtruth"] == truth
    without = next(s for s in load_report_data(folders["heads"].parent)["sections"] if s["kind"] == "heads")
    assert "groundtruth" not in without["data"]


def test_report_command_prints_included_and_skipped(tmp_path, capsys):
    from lightning_attattr.analysis_cli import write_report

    write_attribute_folder(
        tmp_path / "qs" / "attr", [{"name": "a", "tokens": tokens_of(5), "n_layers": 2, "n_heads": 2}]
    )
    (tmp_path / "qs" / "other").mkdir()
    (tmp_path / "qs" / "other" / "scores.json").write_text("{}")
    report = build_report(tmp_path)
    assert report.included == ["qs/attr"]
    assert report.skipped == [("qs/other", "no results the report shows (scores.json)")]
    write_report(str(tmp_path))
    out = capsys.readouterr().out
    assert "report of 1 results folders: qs/attr" in out
    assert "not in the report: qs/other: no results the report shows (scores.json)" in out


@pytest.mark.parametrize("mode", ["tree", "graph"])
def test_tree_folder_is_shown(tmp_path, mode):
    """A `tree` folder: trees.json's summary numbers, and per example its tokens and the tree of its file."""
    tokens = [tokens_of(9, INJECTION_TOKENS[:2]), tokens_of(6)]
    files = write_tree_folder(
        tmp_path / "tree",
        [{"name": "t0", "tokens": tokens[0], "n_layers": 3}, {"name": "t1", "tokens": tokens[1], "n_layers": 3}],
        mode=mode,
    )
    index = json.loads((tmp_path / "tree" / "trees.json").read_text())
    data = load_report_data(tmp_path)
    assert data["included"] == ["tree"] and data["skipped"] == [] and data["examples"] == []
    (section,) = data["sections"]
    assert section["kind"] == "trees" and section["folder"] == "tree" and section["subcommand"] == "tree"
    got = section["data"]
    for key in ("mode", "tau", "root", "words", "max_completeness_error"):
        assert got[key] == index[key], key
    assert got["n_examples"] == 2 and [e["name"] for e in got["examples"]] == ["t0", "t1"]
    for e, toks, item in zip(got["examples"], tokens, index["examples"]):
        file = files[e["name"]]
        assert e["tokens"] == toks and e["layers"] == [0, 1, 2]
        assert (e["predicted"], e["prob"], e["n_edges"]) == (1, 0.75, item["n_edges"])
        assert e["completeness_error"] == file["completeness_error"]
        worst = file["completeness_error"].index(max(file["completeness_error"]))
        assert e["max_completeness_error"] == max(file["completeness_error"])
        assert e["max_completeness_error_layer"] == worst
        assert e["tree"]["nodes"] == file["nodes"] and e["tree"]["n_layers"] == 3 and e["tree"]["root"] == 0
        assert {(n["index"], n["token"]) for n in file["nodes"]} <= set(enumerate(toks))
        if mode == "tree":
            assert e["graph"] is None and e["tree"]["edges"] == file["edges"]
            assert (0, 1) in {(x["parent"], x["child"]) for x in file["edges"]}  # the planted edge
        else:
            assert e["tree"]["edges"] == []
            rows = e["graph"]["edges"]
            assert [r[:3] + [r[5]] for r in rows] == [
                [x["parent"], x["child"], x["layer"], int(x["in_tree"])] for x in file["edges"]
            ]
            for row, x in zip(rows, file["edges"]):
                assert row[3] == pytest.approx(x["attribution"], rel=1e-3)
    page = build_report(tmp_path).html
    assert data_block(page)["sections"][0]["data"]["examples"][0]["tokens"] == tokens[0]  # exact, escaped
    assert "</script>" not in page.split('id="report-data">')[1].split("</script>")[0]


def test_broken_tree_folder(tmp_path):
    """A tree file that is missing, lacks the tree, or does not match the tokens is a clear error."""
    folder = tmp_path / "tree"
    write_tree_folder(folder, [{"name": "t0", "tokens": tokens_of(6), "n_layers": 2}])
    index = json.loads((folder / "trees.json").read_text())
    index["examples"][0]["tokens"] = tokens_of(4)
    (folder / "trees.json").write_text(json.dumps(index))
    with pytest.raises(DataFileError, match="tokens of 't0'.*6 tokens.*got 4"):
        load_report_data(tmp_path)
    (folder / "trees" / "t0.json").write_text(json.dumps({"name": "t0"}))
    with pytest.raises(DataFileError, match="`nodes`, `edges` and `n_layers`"):
        load_report_data(tmp_path)
    (folder / "trees" / "t0.json").unlink()
    with pytest.raises(DataFileError, match="t0.json"):
        load_report_data(tmp_path)
