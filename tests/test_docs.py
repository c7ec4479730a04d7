"""The README and the documentation site: wording, relative links, and the strict MkDocs build."""

from __future__ import annotations

import ast
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

# a 7-40 digit hex string with at least one digit and one letter (a commit hash, not a word or a number)
_HASH = r"\b(?=[0-9a-f]*[0-9])(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b"
# wording about how the project was built, not about what it does: it does not belong in user-facing text
FORBIDDEN = {
    "commit hash as evidence": re.compile(rf"\bcommit\b[^\n]{{0,40}}{_HASH}|{_HASH}[^\n]{{0,40}}\bcommit\b", re.I),
    "issue number": re.compile(r"\bissues?\s*#?\s*\d+", re.I),
    "#number reference": re.compile(r"\b(in|see|fixes|fixed|closes|closed|PR|pull request|from)\s+#\d+\b", re.I),
    "work session": re.compile(
        r"\b(this|that|our|previous|earlier|later|next|same|each|another|one) (work )?sessions?\b", re.I
    ),
    "lent machine": re.compile(r"\b(was|were|is|are|be|been|not) lent\b", re.I),
    "the lead": re.compile(r"\bthe lead\b", re.I),
    "helper worker": re.compile(r"\bhelpers? (session|worker|branch|agent)s?\b|\b(the|a|another|each) helper\b", re.I),
    "exactly as before": re.compile(r"\bexactly as before\b", re.I),
    "defaults of that time": re.compile(r"\bof that time\b", re.I),
    "issue's targets": re.compile(r"\bissue'?s targets\b|\btargets we set\b", re.I),
    "our machines": re.compile(r"\b(these|our) machines\b|\bno GPU was\b", re.I),
}
# citations of other projects' trackers, allowed where they document where a choice comes from
ALLOWED = ("attattr issue #9",)  # the AttAttr authors' answer on the tree root (analysis/trees.py)


def _offences(text: str) -> list[str]:
    found = []
    for line_no, line in enumerate(text.splitlines(), 1):
        cleaned = line
        for allowed in ALLOWED:
            cleaned = cleaned.replace(allowed, "")
        for why, pattern in FORBIDDEN.items():
            match = pattern.search(cleaned)
            if match:
                found.append(f"line {line_no}: {why}: {match.group(0)!r}")
    return found


@pytest.mark.parametrize(
    "text",
    [
        "timed at commit 8fb398c on the shared cores",
        "measured on 3f2a91bc0e (commit) of main",
        "see issue #12 for the plan",
        "as discussed in issue 7",
        "fixed in #123",
        "measured in this session",
        "no GPU was lent to this task",
        "the lead merges it",
        "a helper branch wrote it",
        "fixed rules work exactly as before",
        "class defaults of that time",
        "against the issue's targets",
        "MNLI is not on these machines",
    ],
)
def test_forbidden_wording_is_found(text):
    assert _offences(text), text


@pytest.mark.parametrize(
    "text",
    [
        "the commit of an install from a git URL (from the install metadata)",
        "an interactive session of Python",
        "two run helpers and shared helpers",
        "largest difference 5.5e-7 of the largest attribution; 1000000 steps; a facade",
        "[CLS] #0 (root) and MRPC's #1 String column; └── b #2  layer 1",
        "## 9. Ground truth, section 9",
        "the attattr issue #9 answer",
        "the leading heads",
    ],
)
def test_ordinary_wording_passes(text):
    assert not _offences(text), _offences(text)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_user_facing_pages_have_no_internal_wording(page):
    assert not _offences(page.read_text(encoding="utf-8")), page


def _docstrings() -> list[tuple[str, str]]:
    out = []
    for path in sorted((ROOT / "lightning_attattr").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node, clean=False)
                if doc:
                    out.append((f"{path.relative_to(ROOT)}:{getattr(node, 'lineno', 1)}", doc))
    return out


def test_package_docstrings_have_no_internal_wording():
    bad = {where: found for where, doc in _docstrings() if (found := _offences(doc))}
    assert not bad, bad


_FENCE = re.compile(r"^(```|~~~).*?^\1", re.M | re.S)
_CODE = re.compile(r"``.+?``|`[^`\n]+`")
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def _relative_links(page: Path) -> list[str]:
    text = _CODE.sub("", _FENCE.sub("", page.read_text(encoding="utf-8")))
    links = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # http(s), mailto, ...; or an anchor of the same page (checked by the strict build)
        links.append(target)
    return links


def test_link_extraction():
    page = ROOT / "README.md"
    links = _relative_links(page)
    assert "docs/getting-started.md" in links and "docs/results/report_sst2.png" in links
    assert not any(link.startswith("http") for link in links)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(page):
    missing = []
    for target in _relative_links(page):
        path = target.split("#", 1)[0]
        if path and not (page.parent / path).exists():
            missing.append(target)
    assert not missing, f"{page.relative_to(ROOT)}: {missing}"


def test_griffe_extension_rewrites_sections_and_roles():
    if importlib.util.find_spec("griffe") is None:
        pytest.skip("griffe is not installed: `make docs` installs the `docs` extra")
    spec = importlib.util.spec_from_file_location("griffe_rst", ROOT / "docs" / "_ext" / "griffe_rst.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = "Summary with :class:`~a.b.Result` and :func:`a.b.f`::\n\n    x = 1\n\nExample:\n    >>> 1\n    1"
    want = "Summary with ``Result`` and ``a.b.f``:\n\n    x = 1\n\nExamples:\n    >>> 1\n    1"
    assert module.rewrite(text) == want
    assert module.rewrite(want) == want


def test_mkdocs_build_strict(tmp_path):
    missing = [
        name for name in ("mkdocs", "material", "mkdocstrings_handlers") if importlib.util.find_spec(name) is None
    ]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed: `make docs` installs the `docs` extra and builds the site")
    run = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    assert (tmp_path / "site" / "api" / "attribution" / "index.html").exists()
