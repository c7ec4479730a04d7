"""The report page in headless Chromium (Selenium 4, the system chromedriver; nothing is downloaded).

Skipped when ``/usr/bin/chromium``, ``/usr/bin/chromedriver`` or selenium is missing. Set
``REPORT_SCREENSHOT=/path/shot.png`` to keep a screenshot of the 128-token page.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from lightning_attattr.report import build_report
from tests.report import (
    INJECTION_TOKENS,
    tokens_of,
    write_attribute_folder,
    write_model_folders,
    write_tree_folder,
)

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")

if not CHROMIUM.exists() or not CHROMEDRIVER.exists():
    pytest.skip(
        f"headless Chromium tests need {CHROMIUM} and {CHROMEDRIVER}: `make test-browser` installs them and runs "
        "these tests (or apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )
try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select
except ImportError:  # pragma: no cover - depends on the environment
    pytest.skip(
        "headless Chromium tests need selenium>=4.20: `make test-browser` installs it and runs these tests",
        allow_module_level=True,
    )

# JS: the number of drawn (opaque, not white) pixels of a canvas
NON_BLANK = """
const c = document.getElementById(arguments[0]);
const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let n = 0;
for (let k = 0; k < d.length; k += 4) if (d[k + 3] > 0 && (d[k] < 250 || d[k + 1] < 250 || d[k + 2] < 250)) n++;
return n;
"""


@pytest.fixture(scope="module")
def driver():
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must never download a driver or a browser
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    chrome = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        yield chrome
    finally:
        chrome.quit()


def load(driver, path: Path, timeout: float = 30.0) -> list[dict]:
    """Open ``path`` and wait until the page says it is drawn; returns the SEVERE console entries."""
    driver.get(path.resolve().as_uri())
    deadline = time.monotonic() + timeout
    while not driver.execute_script("return window.__reportReady === true"):
        assert time.monotonic() < deadline, f"the page did not finish drawing: {driver.get_log('browser')}"
        time.sleep(0.05)
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


@pytest.fixture(scope="module")
def small_page(tmp_path_factory) -> tuple[Path, list[list[str]]]:
    root = tmp_path_factory.mktemp("report")
    write_model_folders(root)
    tokens = [tokens_of(12, INJECTION_TOKENS), tokens_of(9)]
    write_attribute_folder(
        root / "attr",
        [
            {"name": "injection", "tokens": tokens[0], "n_layers": 3, "n_heads": 4},
            {"name": "plain", "tokens": tokens[1], "n_layers": 3, "n_heads": 4, "attention": False},
        ],
    )
    return build_report(root).save(), tokens


@pytest.fixture(scope="module")
def large_page(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("large")
    write_attribute_folder(root, [{"name": "long", "tokens": tokens_of(128), "n_layers": 12, "n_heads": 12}])
    return build_report(root).save()


def data_url(driver, canvas_id: str) -> str:
    return driver.execute_script("return document.getElementById(arguments[0]).toDataURL()", canvas_id)


def hover_cell(driver, canvas_id: str, row: int, col: int) -> dict:
    """Move the mouse over cell (row, col) of a heatmap; returns what the tooltip shows."""
    canvas = driver.find_element(By.ID, canvas_id)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", canvas)
    geometry = driver.execute_script(
        "const c = arguments[0], r = c.getBoundingClientRect();"
        "return {left: +c.dataset.left, top: +c.dataset.top, cell: +c.dataset.cell, w: r.width, h: r.height};",
        canvas,
    )
    # Selenium 4 offsets are from the element's centre
    dx = geometry["left"] + (col + 0.5) * geometry["cell"] - geometry["w"] / 2
    dy = geometry["top"] + (row + 0.5) * geometry["cell"] - geometry["h"] / 2
    ActionChains(driver).move_to_element_with_offset(canvas, int(round(dx)), int(round(dy))).perform()
    return driver.execute_script(
        "const t = document.getElementById('tooltip');"
        "return {hidden: t.hidden, row: t.querySelector('.tip-row').textContent,"
        " col: t.querySelector('.tip-col').textContent, value: t.querySelector('.tip-value').textContent,"
        " rowIndex: t.dataset.row, colIndex: t.dataset.col};"
    )


def test_page_draws_without_errors(driver, small_page):
    path, tokens = small_page
    assert load(driver, path) == []
    assert driver.execute_script(NON_BLANK, "attr-canvas") > 100
    assert driver.execute_script(NON_BLANK, "attn-canvas") > 100
    data = json.loads(driver.execute_script("return document.getElementById('report-data').textContent"))
    tree = data["examples"][0]["tree"]
    assert len(driver.find_elements(By.CSS_SELECTOR, "#tree-svg g.node")) == len(tree["nodes"]) > 1
    assert len(driver.find_elements(By.CSS_SELECTOR, "#tree-svg path.edge")) == len(tree["edges"])
    assert len(driver.find_elements(By.CSS_SELECTOR, "#top-edges li")) == 10
    kinds = [s.get_attribute("data-kind") for s in driver.find_elements(By.CSS_SELECTOR, "section.model-section")]
    assert sorted(kinds) == ["attack", "effectiveness", "faithfulness", "heads", "universality"]
    assert len(driver.find_elements(By.CSS_SELECTOR, "canvas.importance")) == 2
    assert len(driver.find_elements(By.CSS_SELECTOR, "canvas.correlation")) == 2
    # pruning: attattr, taylor, random (not per seed); effectiveness: 2; faithfulness: 3 methods x drop, flip
    assert len(driver.find_elements(By.CSS_SELECTOR, "svg.chart polyline")) == 3 + 2 + 3 * 2
    assert "no nonsense" in driver.find_element(By.CSS_SELECTOR, "section[data-kind=attack]").text


def test_tree_and_graph_views(driver, small_page):
    """The view selector swaps the tree for the layered graph; both state the worst completeness error."""
    path, _ = small_page
    assert load(driver, path) == []
    example = json.loads(driver.execute_script("return document.getElementById('report-data').textContent"))[
        "examples"
    ][0]
    completeness = driver.find_element(By.ID, "tree-completeness").text
    assert completeness.startswith("Worst completeness error of the maps the tree was built from: ")
    worst_layer = example["layers"][example["max_completeness_error_layer"]]
    assert completeness.endswith(f"(layer {worst_layer}).")
    Select(driver.find_element(By.ID, "tree-mode")).select_by_value("graph")
    rows = example["graph"]["edges"]
    extra = sum(1 for r in rows if not r[5])
    assert extra > 0 and driver.find_element(By.ID, "tree-title").text == "Attribution graph"
    assert len(driver.find_elements(By.CSS_SELECTOR, "#tree-svg path.edge")) == len(rows)
    assert len(driver.find_elements(By.CSS_SELECTOR, "#tree-svg path.edge.extra")) == extra
    dash = driver.find_element(By.CSS_SELECTOR, "#tree-svg path.edge.extra").value_of_css_property("stroke-dasharray")
    assert dash not in ("none", "")
    # one box per (row, token) an edge touches, the root on the top row
    places = {(layer + 1, parent) for parent, _, layer, *_ in rows} | {(layer, child) for _, child, layer, *_ in rows}
    places.add((example["graph"]["n_layers"], example["graph"]["root"]))
    assert len(driver.find_elements(By.CSS_SELECTOR, "#tree-svg g.node")) == len(places)
    assert f"{extra} of them dropped by the tree's one-parent rule" in driver.find_element(By.ID, "tree-caption").text
    assert "the graph was built from" in driver.find_element(By.ID, "tree-completeness").text
    # the graph view stays while the example changes; the tree comes back
    Select(driver.find_element(By.ID, "example-select")).select_by_index(1)
    assert driver.find_element(By.ID, "tree-title").text == "Attribution graph"
    Select(driver.find_element(By.ID, "tree-mode")).select_by_value("tree")
    Select(driver.find_element(By.ID, "example-select")).select_by_index(0)
    assert len(driver.find_elements(By.CSS_SELECTOR, "#tree-svg path.edge")) == len(example["tree"]["edges"])
    assert driver.find_elements(By.CSS_SELECTOR, "#tree-svg path.edge.extra") == []
    assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []


def test_injection_tokens_are_text(driver, small_page):
    path, tokens = small_page
    assert load(driver, path) == []
    shown = driver.execute_script("return Array.from(document.querySelectorAll('#tokens .token'), s => s.textContent)")
    assert shown == tokens[0]
    assert driver.execute_script("return document.querySelectorAll('b, img, #report script').length") == 0
    assert driver.execute_script("return window.__injected") is None
    assert "</script>" in driver.find_element(By.ID, "tokens").text


def test_switching_layer_and_head_redraws(driver, small_page):
    path, _ = small_page
    assert load(driver, path) == []
    before = data_url(driver, "attr-canvas"), data_url(driver, "attn-canvas")
    Select(driver.find_element(By.ID, "layer-select")).select_by_index(1)
    after_layer = data_url(driver, "attr-canvas"), data_url(driver, "attn-canvas")
    assert after_layer[0] != before[0] and after_layer[1] != before[1]
    Select(driver.find_element(By.ID, "head-select")).select_by_value("2")
    after_head = data_url(driver, "attr-canvas"), data_url(driver, "attn-canvas")
    assert after_head[0] != after_layer[0] and after_head[1] != after_layer[1]
    assert "head 2" in driver.find_element(By.ID, "top-edges").find_element(By.XPATH, "preceding-sibling::h3[1]").text
    # the second example has no attention: its figure is hidden, the AttAttr map still drawn
    Select(driver.find_element(By.ID, "example-select")).select_by_index(1)
    assert driver.execute_script("return document.getElementById('attn-figure').hidden") is True
    assert driver.execute_script(NON_BLANK, "attr-canvas") > 50
    assert driver.find_element(By.ID, "example-title").text == "attr/plain"
    assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []


def test_hover_shows_query_and_key(driver, small_page):
    path, tokens = small_page
    assert load(driver, path) == []
    row, col = tokens[0].index("</script>"), tokens[0].index('"<b>')
    tip = hover_cell(driver, "attr-canvas", row, col)
    assert not tip["hidden"]
    assert (tip["row"], tip["col"]) == (tokens[0][row], tokens[0][col])
    assert (tip["rowIndex"], tip["colIndex"]) == (str(row), str(col))
    tip = hover_cell(driver, "attn-canvas", 0, 11)
    assert (tip["row"], tip["col"]) == ("[CLS]", "[SEP]")


def test_large_example_renders_fast(driver, large_page, tmp_path):
    size = large_page.stat().st_size
    assert load(driver, large_page) == []
    first_render_ms = driver.execute_script("return window.__reportRendered")
    print(
        f"\n128 tokens, 12 layers x 12 heads: {size / 1e6:.2f} MB, first heatmap drawn after {first_render_ms:.0f} ms"
    )
    assert driver.execute_script(NON_BLANK, "attr-canvas") > 10_000
    tip = hover_cell(driver, "attr-canvas", 127, 0)
    assert (tip["row"], tip["col"]) == ("[SEP]", "[CLS]")
    before = data_url(driver, "attr-canvas")
    Select(driver.find_element(By.ID, "head-select")).select_by_value("11")
    assert data_url(driver, "attr-canvas") != before
    assert first_render_ms < 15_000  # generous: two shared CPU cores
    height = driver.execute_script("return document.body.scrollHeight")
    driver.set_window_size(1400, min(height + 40, 4000))
    assert driver.save_screenshot(str(tmp_path / "report.png"))
    if os.environ.get("REPORT_SCREENSHOT"):
        assert driver.save_screenshot(os.environ["REPORT_SCREENSHOT"])
    driver.set_window_size(1400, 1000)


def test_repr_html_iframe_renders(driver, small_page, tmp_path):
    """What Jupyter shows: the page inside a sandboxed iframe of a host page, its styles kept inside."""
    path, tokens = small_page
    from lightning_attattr.report import Report

    report = Report(path.read_text(encoding="utf-8"), path.parent)
    host = tmp_path / "notebook.html"
    host.write_text(f"<!DOCTYPE html><html><body><h1 id='host'>notebook</h1>{report._repr_html_()}</body></html>")
    driver.get(host.as_uri())
    frame = driver.find_element(By.TAG_NAME, "iframe")
    assert 900 <= frame.size["height"] <= 902  # plus the border
    driver.switch_to.frame(frame)
    try:
        deadline = time.monotonic() + 30
        while not driver.execute_script("return window.__reportReady === true"):
            assert time.monotonic() < deadline, driver.get_log("browser")
            time.sleep(0.05)
        assert driver.execute_script(NON_BLANK, "attr-canvas") > 100
        shown = driver.execute_script(
            "return Array.from(document.querySelectorAll('#tokens .token'), s => s.textContent)"
        )
        assert shown == tokens[0]
    finally:
        driver.switch_to.default_content()
    # the report's stylesheet does not reach the host page
    assert driver.execute_script("return getComputedStyle(document.getElementById('host')).fontSize") == "32px"
    assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []


def test_map_titles_above_and_special_token_toggle(driver, small_page):
    """Both heatmaps have their title above them; the toggle hides [CLS]/[SEP] in the maps and edges."""
    path, tokens = small_page
    assert load(driver, path) == []
    for figure, title in (("attr-figure", "attr-title"), ("attn-figure", "attn-title")):
        heading = driver.find_element(By.ID, title)
        canvas = driver.find_element(By.CSS_SELECTOR, f"#{figure} canvas")
        assert heading.text and heading.rect["y"] + heading.rect["height"] <= canvas.rect["y"]
    assert driver.find_element(By.ID, "attr-title").text == "AttAttr map (all heads summed, layer 0)"
    n = len(tokens[0])
    assert driver.execute_script("return +document.getElementById('attr-canvas').dataset.rows") == n
    edges = lambda: driver.execute_script(  # noqa: E731
        "return Array.from(document.querySelectorAll('#top-edges li'), li => [+li.dataset.query, +li.dataset.key])"
    )
    special = {0, n - 1}
    assert any(i in special or j in special for i, j in edges())  # the summed toy maps favour [CLS]/[SEP]
    driver.find_element(By.ID, "hide-special").click()
    for canvas in ("attr-canvas", "attn-canvas"):
        assert driver.execute_script(f"return +document.getElementById('{canvas}').dataset.rows") == n - 2
    shown = edges()
    assert len(shown) == 10 and not any(i in special or j in special for i, j in shown)
    assert (
        "2 special tokens hidden"
        in driver.find_element(By.ID, "top-edges").find_element(By.XPATH, "preceding-sibling::h3[1]").text
    )
    row, col = tokens[0].index("</script>") - 1, tokens[0].index('"<b>') - 1  # one column less: [CLS] hidden
    tip = hover_cell(driver, "attr-canvas", row, col)
    assert (tip["row"], tip["col"]) == ("</script>", '"<b>')  # not taken for a special token
    driver.find_element(By.ID, "hide-special").click()
    assert driver.execute_script("return +document.getElementById('attr-canvas').dataset.rows") == n
    assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []


def test_tree_edges_by_attribution_apart_and_highlighted(driver, small_page):
    """Edge width follows the attribution; edges into one box end apart; hovering highlights one edge."""
    path, _ = small_page
    assert load(driver, path) == []
    paths = driver.find_elements(By.CSS_SELECTOR, "#tree-svg path.edge")
    assert len(paths) > 1
    values = [abs(float(p.get_attribute("data-attribution"))) for p in paths]
    widths = [float(p.get_attribute("stroke-width")) for p in paths]
    order = sorted(range(len(paths)), key=values.__getitem__)
    assert [widths[k] for k in order] == sorted(widths) and widths[order[-1]] == 4.5
    ends = driver.execute_script(
        "return Array.from(document.querySelectorAll('#tree-svg path.edge'), p => {"
        " const l = p.getTotalLength(), q = p.getPointAtLength(l); return [p.dataset.parent, q.x, q.y]; })"
    )
    assert len({(parent, round(x), round(y)) for parent, x, y in ends}) == len(ends)  # no two share an arrowhead
    ActionChains(driver).move_to_element(paths[order[-1]]).perform()
    assert driver.execute_script("return document.getElementById('tree-svg').classList.contains('dimmed')")
    assert "highlight" in paths[order[-1]].get_attribute("class")
    assert sum("highlight" in p.get_attribute("class") for p in paths) == 1


@pytest.fixture(scope="module")
def trees_page(tmp_path_factory) -> Path:
    """A tree folder (two examples, one with injection tokens) and a graph folder (one example)."""
    root = tmp_path_factory.mktemp("trees")
    specs = [{"name": "t0", "tokens": tokens_of(10, INJECTION_TOKENS), "n_layers": 3}]
    write_tree_folder(root / "graph", [{"name": "g0", "tokens": tokens_of(8), "n_layers": 3}], mode="graph")
    write_tree_folder(root / "tree", [*specs, {"name": "t1", "tokens": tokens_of(7), "n_layers": 2}])
    return build_report(root).save()


def test_tree_folders_are_drawn(driver, trees_page):
    """Each tree folder's section: summary, table, tokens, and its tree or graph with edges by attribution."""
    assert load(driver, trees_page) == []
    assert not driver.execute_script("return window.__injected === 1")
    data = json.loads(driver.execute_script("return document.getElementById('report-data').textContent"))
    graph_section, tree_section = data["sections"]
    assert [s["kind"] for s in data["sections"]] == ["trees", "trees"] and data["examples"] == []
    # the graph folder: every edge row drawn, dashed where the tree drops it
    rows = graph_section["data"]["examples"][0]["graph"]["edges"]
    assert len(driver.find_elements(By.CSS_SELECTOR, "#trees-0-svg path.edge")) == len(rows) > 0
    extra = sum(1 for r in rows if not r[5])
    assert len(driver.find_elements(By.CSS_SELECTOR, "#trees-0-svg path.edge.extra")) == extra
    assert "1 graph (mode graph, τ = 0.4" in driver.find_element(By.ID, "trees-0-summary").text
    # the tree folder: its summary, one table row per example, the first example's tokens and tree
    summary = driver.find_element(By.ID, "trees-1-summary").text
    assert summary.startswith("2 trees (mode tree, τ = 0.4, root rule cls, on tokens)")
    section = driver.find_element(By.CSS_SELECTOR, "section.model-section[data-kind=trees]:nth-of-type(2)")
    assert len(section.find_elements(By.CSS_SELECTOR, "table.numbers tbody tr")) == 2
    first = tree_section["data"]["examples"][0]
    tokens = [t.get_attribute("textContent") for t in driver.find_elements(By.CSS_SELECTOR, "#trees-1-tokens .token")]
    assert tokens == first["tokens"]
    nodes = driver.find_elements(By.CSS_SELECTOR, "#trees-1-svg g.node")
    paths = driver.find_elements(By.CSS_SELECTOR, "#trees-1-svg path.edge")
    assert len(nodes) == len(first["tree"]["nodes"]) and len(paths) == len(first["tree"]["edges"]) > 1
    values = [abs(float(p.get_attribute("data-attribution"))) for p in paths]
    widths = [float(p.get_attribute("stroke-width")) for p in paths]
    colours = driver.execute_script(
        "return Array.from(document.querySelectorAll('#trees-1-svg path.edge'), p => getComputedStyle(p).stroke)"
    )
    order = sorted(range(len(paths)), key=values.__getitem__)
    assert [widths[k] for k in order] == sorted(widths) and widths[order[-1]] == 4.5
    # colour: the strongest edge full red, paler (more green) as the attribution falls
    greens = [int(colours[k].split(",")[1]) for k in order]
    assert greens == sorted(greens, reverse=True) and colours[order[-1]] == "rgb(178, 24, 43)"
    assert greens[0] > greens[-1]
    # the example selector swaps tokens and tree
    Select(driver.find_element(By.ID, "trees-1-select")).select_by_index(1)
    second = tree_section["data"]["examples"][1]
    assert driver.find_element(By.ID, "trees-1-title").text.startswith("Attribution tree of t1")
    assert len(driver.find_elements(By.CSS_SELECTOR, "#trees-1-tokens .token")) == len(second["tokens"])
    assert len(driver.find_elements(By.CSS_SELECTOR, "#trees-1-svg path.edge")) == len(second["tree"]["edges"])
    assert [e for e in driver.get_log("browser") if e["level"] == "SEVERE"] == []
