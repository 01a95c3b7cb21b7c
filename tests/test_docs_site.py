"""The README's and docs' figures are what `lesion docs` writes from the committed reports (and change when a
report does), and the docs build as a site with `mkdocs build --strict` (broken links fail it)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lesion_ml.app.cli import main
from lesion_ml.app.figures import REGIONS, TIMINGS, fill, figure_pages, stale_figures

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
REGION = re.compile(r"<!-- figures:([\w-]+) -->\n(.*?)<!-- /figures -->", re.S)
STALE = "differs from the committed reports: run `lesion docs` (from the repository root) and commit the pages"


def _regions(text: str) -> dict[str, str]:
    return dict(REGION.findall(text))


def _copy_site(root: Path) -> Path:
    """README.md, docs/ and reports/ of the repository under `root`; returns the copied docs folder."""
    shutil.copy(REPO / "README.md", root / "README.md")
    shutil.copytree(DOCS, root / "docs")
    shutil.copytree(REPO / "reports", root / "reports")
    return root / "docs"


@pytest.mark.parametrize("page", figure_pages(DOCS), ids=lambda p: p.name)
def test_the_committed_figures_are_what_lesion_docs_writes(page: Path) -> None:
    text = page.read_text(encoding="utf-8")
    assert fill(text, REPO, where=str(page)) == text, f"{page.relative_to(REPO)} {STALE}"


def test_every_region_is_on_a_page_and_the_readme_has_the_demo_figures() -> None:
    used = {name for page in figure_pages(DOCS) for name in _regions(page.read_text(encoding="utf-8"))}
    assert used == set(REGIONS)
    assert {"timings", "demo-metrics"} <= set(_regions((REPO / "README.md").read_text(encoding="utf-8")))
    assert stale_figures(DOCS) == []


def test_a_changed_report_changes_the_region_and_the_check_fails(tmp_path: Path, capsys) -> None:
    docs = _copy_site(tmp_path)
    readme = tmp_path / "README.md"
    before = _regions(readme.read_text())["timings"]
    assert main(["docs", "--check", "--out", str(docs)]) == 0
    timings = tmp_path / TIMINGS
    report = json.loads(timings.read_text())
    report["make_test"]["passed"] += 1  # one figure of one report
    timings.write_text(json.dumps(report))
    capsys.readouterr()
    assert main(["docs", "--check", "--out", str(docs)]) == 1
    err = capsys.readouterr().err
    assert str(readme.resolve()) in err and str(docs / "getting-started.md") in err and "lesion docs" in err
    assert _regions(readme.read_text())["timings"] == before  # --check writes nothing
    assert main(["docs", "--out", str(docs)]) == 0
    after = _regions(readme.read_text())["timings"]
    passed = report["make_test"]["passed"]
    assert after != before and f"{passed:,} tests passed" in after and f"{passed - 1:,} tests passed" in before
    assert main(["docs", "--check", "--out", str(docs)]) == 0


def test_a_changed_metric_changes_the_demo_table(tmp_path: Path) -> None:
    docs = _copy_site(tmp_path)
    metrics = tmp_path / "reports" / "metrics.json"
    report = json.loads(metrics.read_text())
    report["models"]["gbdt"]["roc_auc"] = 0.9123
    metrics.write_text(json.dumps(report))
    page = docs / "evaluation.md"
    before = _regions(page.read_text())["demo-metrics"]
    after = _regions(fill(page.read_text(), tmp_path, where="evaluation.md"))["demo-metrics"]
    assert "0.9123" in after and "0.9123" not in before
    assert set(after.splitlines()) ^ set(before.splitlines()) == {
        line for line in before.splitlines() + after.splitlines() if line.startswith("gbdt ")}


def test_an_unknown_or_unclosed_region_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown figures region"):
        fill("<!-- figures:nope -->\n<!-- /figures -->\n", REPO, where="x.md")
    with pytest.raises(ValueError, match="without its"):
        fill("<!-- figures:timings -->\nno end\n", REPO, where="x.md")


def test_a_missing_report_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="timings.json"):
        fill("<!-- figures:timings -->\n<!-- /figures -->\n", tmp_path, where="x.md")


def _mkdocs() -> str | None:
    return os.environ.get("MKDOCS") or shutil.which("mkdocs")


@pytest.mark.skipif(_mkdocs() is None, reason="no mkdocs executable (set MKDOCS=/path/to/mkdocs or put mkdocs on "
                    "PATH; it is not a dependency of the run environment, .ci/run builds the site in its own venv)")
def test_the_docs_build_as_a_site_in_strict_mode(tmp_path: Path) -> None:
    run = subprocess.run([_mkdocs(), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "site" / "index.html").is_file() and (tmp_path / "site" / "benchmarks" / "index.html").is_file()


@pytest.mark.skipif(_mkdocs() is None, reason="no mkdocs executable (set MKDOCS or put mkdocs on PATH)")
def test_strict_mode_fails_on_a_broken_link(tmp_path: Path) -> None:
    shutil.copy(REPO / "mkdocs.yml", tmp_path / "mkdocs.yml")
    shutil.copytree(DOCS, tmp_path / "docs")
    page = tmp_path / "docs" / "gpu.md"
    page.write_text(page.read_text() + "\nSee [the missing page](missing.md).\n")
    run = subprocess.run([_mkdocs(), "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "missing.md" in run.stderr


def test_the_readme_is_an_entry_point_without_history() -> None:
    """At most 220 lines; no date outside a generated region, no commit hash, no "this version"."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 220
    prose = REGION.sub("", text)
    assert re.findall(r"\b20\d\d-\d\d-\d\d\b", prose) == []
    assert re.findall(r"\b(?=[0-9a-f]*\d)(?=[0-9a-f]*[a-f])[0-9a-f]{7,40}\b", prose) == []
    assert not re.search(r"this version|the version before", prose, re.I)
    links = re.findall(r"\]\((docs/[\w.-]+\.md)\)", text)
    assert links and [link for link in links if not (REPO / link).is_file()] == []
