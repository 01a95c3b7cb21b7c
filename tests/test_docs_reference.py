"""The reference pages docs/params.md and docs/cli.md are generated from the code (`lesion docs`):
the committed pages equal what the code writes, the check notices a one-key change, every option
has help, and no help or params description names an internal class."""
from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest
from pydantic import Field, create_model

from lesion_ml.app.cli import build_parser, main
from lesion_ml.app.docs import PAGES, arguments, cli_reference, commands, help_text, params_reference, \
    params_rows, write_reference
from lesion_ml.config import Params, SplitConfig

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
STALE = "is stale: run `lesion docs` (from the repository root) and commit docs/params.md and docs/cli.md"


@functools.cache
def _internal_classes() -> frozenset[str]:
    """Every class defined in lesion_ml/, tasks/ and flows/ (read off the source, nothing imported)."""
    names = set()
    for folder in ("lesion_ml", "tasks", "flows"):
        for path in (REPO / folder).rglob("*.py"):
            names |= {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.ClassDef)}
    return frozenset(names)


def _names_a_class(text: str, classes: frozenset[str]) -> list[str]:
    """The internal class names in `text`: any defined class, and any word ending in Config."""
    words = set(re.findall(r"\b[A-Za-z_]\w*\b", text))
    return sorted(w for w in words if w in classes or w.endswith("Config"))


@pytest.mark.parametrize("page", sorted(PAGES.values()))
def test_the_committed_pages_are_what_the_code_writes(page: str) -> None:
    expected = {PAGES["params"]: params_reference(), PAGES["cli"]: cli_reference(build_parser())}[page]
    committed = DOCS / page
    assert committed.is_file(), f"docs/{page} is missing: run `lesion docs` and commit it"
    assert committed.read_text(encoding="utf-8") == expected, f"docs/{page} {STALE}"


def test_a_new_params_key_changes_the_params_page() -> None:
    split = create_model("SplitConfig", __base__=SplitConfig,
                         n_repeats=(int, Field(1, ge=1, description="times the folds are redrawn")))
    changed = create_model("Params", __base__=Params, split=(split, split()))
    before, after = params_reference(), params_reference(changed)
    assert before != after
    assert "| `split.n_repeats` | `int` | `1` | `>= 1` | times the folds are redrawn |" in after.splitlines()
    assert set(after.splitlines()) - set(before.splitlines()) == {
        "| `split.n_repeats` | `int` | `1` | `>= 1` | times the folds are redrawn |"}


def test_a_new_option_changes_the_cli_page() -> None:
    parser = build_parser()
    before = cli_reference(parser)
    parser.add_argument("--verbose", action="store_true", help="log more")
    after = cli_reference(parser)
    assert before != after and "| `--verbose` | `off` |  | log more |" in after
    assert cli_reference(parser) == after  # the same parser, the same page: nothing left over


def test_the_pages_do_not_depend_on_the_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    narrow = cli_reference(build_parser())
    monkeypatch.setenv("COLUMNS", "300")
    assert cli_reference(build_parser()) == narrow


def test_docs_check_fails_on_a_stale_page_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["docs", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(PAGES.values())
    assert main(["docs", "--check", "--out", str(tmp_path)]) == 0
    stale = tmp_path / PAGES["cli"]
    old = stale.read_text().replace("--malignant-fraction", "--malignant-share")  # an old copy
    stale.write_text(old)
    (tmp_path / PAGES["params"]).unlink()
    capsys.readouterr()
    assert main(["docs", "--check", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert str(stale) in err and str(tmp_path / PAGES["params"]) in err and "lesion docs" in err
    assert stale.read_text() == old and not (tmp_path / PAGES["params"]).exists()


def test_write_reference_writes_both_pages(tmp_path: Path) -> None:
    written = write_reference(tmp_path / "docs", parser=build_parser())
    assert [p.name for p in written] == [PAGES["params"], PAGES["cli"]]
    assert written[0].read_text() == params_reference()


def test_every_command_and_option_has_help_naming_no_internal_class() -> None:
    classes = _internal_classes()
    assert {"ModelRef", "TuneBase", "CnnModelConfig"} <= classes
    missing, naming = [], []
    for cmd in commands(build_parser()):
        if cmd.name != "lesion" and not cmd.help.strip():
            missing.append(cmd.name)
        naming += [f"{cmd.name}: {w}" for w in _names_a_class(cmd.help + " " + (cmd.parser.epilog or ""), classes)]
        for action in arguments(cmd.parser):
            where = f"{cmd.name} {'/'.join(action.option_strings) or action.dest}"
            text = help_text(action, cmd.parser.prog)
            if not text.strip():
                missing.append(where)
            naming += [f"{where}: {w}" for w in _names_a_class(text, classes)]
    assert missing == [], "options without help text"
    assert naming == [], "help texts that name an internal class"


def test_every_params_key_has_a_description_naming_no_internal_class() -> None:
    classes = _internal_classes()
    rows = [r for name, info in Params.model_fields.items()
            for r in params_rows(info.annotation, getattr(Params(), name), name)]
    assert len(rows) > 100 and "train_cnn.models.<name>.backbone" in {r.key for r in rows}
    assert [r.key for r in rows if not r.description.strip()] == []
    assert [f"{r.key}: {w}" for r in rows for w in _names_a_class(r.description, classes)] == []
    page = params_reference()
    assert _names_a_class(page.replace("`lesion docs`", ""), classes) == []
