"""Size and time to first render of the interactive report for a 128-token, 12-layer, 12-head example; prints JSON.

A synthetic ``analyze.py attribute`` folder (one example, seeded) is written to a temporary folder:
raw attention maps with the usual head patterns ([CLS], [SEP], previous / next token, self) plus
noise, and AttAttr maps ``attention * noise`` with a few strong [CLS] edges in the last layer, so
that the maps are about as sparse as real ones. The page is built with
:func:`lightning_attattr.report.build_report` and opened ``--loads`` times in headless Chromium
(Selenium 4, the system ``/usr/bin/chromedriver``; nothing is downloaded); the time to first render
is ``window.__reportRendered`` (``performance.now()`` when the first heatmap is drawn, i.e. from
navigation start), and the median over the loads is reported. ``file_size_random_maps_bytes`` is
the size of the same page when the maps are white noise (which deflate worst).

    python benchmarks/report_render.py --screenshot docs/report.png
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # `python benchmarks/report_render.py` from anywhere
    sys.path.insert(0, str(ROOT))

from lightning_attattr.report import build_report  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WORDS = (
    "the film is a charming and often affecting journey , but its second half drags and the ending feels "
    "rushed ; still , the performances are strong and the score is lovely"
).split()


def tokens_for(n: int) -> list[str]:
    """``[CLS]`` + ``n - 2`` word pieces cycling through a review + ``[SEP]``."""
    return ["[CLS]", *[WORDS[k % len(WORDS)] for k in range(n - 2)], "[SEP]"]


def synthetic_maps(n: int, n_layers: int, n_heads: int, structured: bool, seed: int) -> tuple[torch.Tensor, ...]:
    """``(attributions, attention)``, each ``[layer, head, n, n]``."""
    gen = torch.Generator().manual_seed(seed)
    if not structured:
        return 0.01 * torch.randn(n_layers, n_heads, n, n, generator=gen), torch.rand(
            n_layers, n_heads, n, n, generator=gen
        )
    logits = torch.randn(n_layers, n_heads, n, n, generator=gen)  # [layer, head, q, k]
    rows = torch.arange(n)
    for layer in range(n_layers):
        for head in range(n_heads):
            kind = (layer * n_heads + head) % 5
            keys = {
                0: torch.zeros_like(rows),
                1: torch.full_like(rows, n - 1),
                2: (rows - 1).clamp(min=0),
                3: (rows + 1).clamp(max=n - 1),
                4: rows,
            }[kind]
            logits[layer, head, rows, keys] += 6.0
    attention = torch.softmax(logits, -1)
    attributions = attention * torch.randn(n_layers, n_heads, n, n, generator=gen) * 0.05
    attributions[-1, :, 0, 1:6] += 0.02  # [CLS] gathers from the first words in the last layer
    return attributions, attention


def write_folder(folder: Path, n: int, n_layers: int, n_heads: int, structured: bool, seed: int = 0) -> None:
    """An ``analyze.py attribute`` results folder with one example."""
    attributions, attention = synthetic_maps(n, n_layers, n_heads, structured, seed)
    item: dict[str, Any] = {
        "name": "synthetic-128",
        "tokens": tokens_for(n),
        "layers": list(range(n_layers)),
        "target": 1,
        "probs": [0.12, 0.88],
        "predicted": 1,
        "label": 1,
        "completeness_error": [4e-4] * n_layers,
        "convergence_delta": [1e-5] * n_layers,
        "n_steps_used": [7] * n_layers,
        "file": "examples/synthetic-128.pt",
    }
    (folder / "examples").mkdir(parents=True, exist_ok=True)
    torch.save({**item, "attributions": attributions, "attention": attention}, folder / item["file"])
    (folder / "attributions.json").write_text(json.dumps({"examples": [item]}), encoding="utf-8")


def open_chromium() -> Any:
    """A headless Chromium driven by the system chromedriver (never a download)."""
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def load(driver: Any, page: Path, timeout: float = 60.0) -> float:
    """Open ``page``; returns the time to first render (ms) after checking the console has no error."""
    driver.get(page.resolve().as_uri())
    deadline = time.monotonic() + timeout
    while not driver.execute_script("return window.__reportReady === true"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"{page} did not finish drawing in {timeout} s: {driver.get_log('browser')}")
        time.sleep(0.02)
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    if errors:
        raise RuntimeError(f"console errors: {errors}")
    return float(driver.execute_script("return window.__reportRendered"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--loads", type=int, default=3, help="page loads; the median time is reported")
    parser.add_argument("--screenshot", type=Path, default=None, help="save a screenshot here (e.g. docs/report.png)")
    parser.add_argument("--output", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        sizes = {}
        for structured in (True, False):
            folder = tmp_path / ("synthetic-128" if structured else "random-maps")
            write_folder(folder, args.tokens, args.layers, args.heads, structured)
            start = time.perf_counter()
            report = build_report(folder)
            build_s = time.perf_counter() - start
            page = report.save()
            sizes[structured] = (page, page.stat().st_size, build_s)
        page = sizes[True][0]
        driver = open_chromium()
        try:
            times = [load(driver, page) for _ in range(args.loads)]
            if args.screenshot is not None:
                height = int(driver.execute_script("return document.getElementById('examples').scrollHeight"))
                driver.set_window_size(1400, min(height + 260, 2600))
                time.sleep(0.2)
                args.screenshot.parent.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(args.screenshot))
            caps = driver.capabilities
            result = {
                "example": f"{args.tokens} tokens, {args.layers} layers x {args.heads} heads, with raw attention",
                "file_size_bytes": sizes[True][1],
                "file_size_random_maps_bytes": sizes[False][1],
                "build_report_s": round(sizes[True][2], 3),
                "time_to_first_render_ms": round(statistics.median(times), 1),
                "time_to_first_render_ms_all": [round(t, 1) for t in times],
                "chromium_version": caps.get("browserVersion"),
                "chromedriver_version": str(caps.get("chrome", {}).get("chromedriverVersion", "")).split(" ")[0],
                "screenshot": str(args.screenshot) if args.screenshot else None,
            }
        finally:
            driver.quit()
    text = json.dumps(result, indent=2)
    print(text)
    if args.output is not None:
        args.output.write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
