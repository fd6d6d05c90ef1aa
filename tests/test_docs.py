"""The documentation: the generated key reference is current and complete, the README stays a
short front page that names every topic page, and no relative link points at a missing file."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from tests.conftest import REPO

KEYS_MD = REPO / "docs" / "reference" / "keys.md"
README = REPO / "README.md"
README_LIMIT = 12 * 1024  # bytes
#: Topic pages the README must link: every docs/*.md.
TOPIC_PAGES = sorted((REPO / "docs").glob("*.md"))
#: ](target) in Markdown, up to the first space or closing parenthesis.
LINK = re.compile(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def _reference_keys():
    spec = importlib.util.spec_from_file_location("reference_keys", REPO / "scripts" / "reference_keys.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rendered() -> str:
    return _reference_keys().render()


def test_committed_key_reference_is_what_the_declarations_render(rendered):
    committed = KEYS_MD.read_text() if KEYS_MD.is_file() else ""
    assert committed == rendered, "docs/reference/keys.md is out of date: run python scripts/reference_keys.py"


def test_key_reference_names_every_trainer_and_common_schedule_key(rendered):
    from trainer.app.validate import trainer_params
    from trainer.schedules.registry import COMMON

    plain, nodes = trainer_params()
    keys = [f"trainer.{key}" for key in plain]
    keys += [f"trainer.{node}.{key}" for node, params in nodes.items() for key in params]
    keys += [f"schedule.{key}" for key in COMMON]
    missing = [key for key in keys if f"`{key}`" not in rendered]
    assert not missing, f"render() leaves out {missing}"


def test_key_reference_check_mode_fails_on_a_stale_file(tmp_path, monkeypatch, capsys):
    module = _reference_keys()
    stale = tmp_path / "keys.md"
    stale.write_text("# stale\n")
    monkeypatch.setattr(module, "OUTPUT", stale)
    monkeypatch.setattr(module, "REPO", tmp_path)
    assert module.main(["--check"]) == 1
    assert "run python scripts/reference_keys.py" in capsys.readouterr().err


def test_readme_is_a_short_front_page():
    size = len(README.read_bytes())
    assert size <= README_LIMIT, f"README.md is {size} bytes; move detail to a page in docs/ (limit {README_LIMIT})"


def _markdown_files() -> list[Path]:
    return [README, *TOPIC_PAGES, KEYS_MD]


def _without_code(text: str) -> str:
    return re.sub(r"```.*?```", "", text, flags=re.S)  # code blocks hold code, not links or headings


def _anchors(page: Path) -> set[str]:
    """The anchors GitHub gives a page's headings: lower case, punctuation dropped, spaces as
    hyphens, a repeated heading numbered."""
    anchors: set[str] = set()
    repeats: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} +(.+?) *$", _without_code(page.read_text()), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchors.add(slug if slug not in repeats else f"{slug}-{repeats[slug]}")
        repeats[slug] = repeats.get(slug, 0) + 1
    return anchors


@pytest.mark.parametrize("page", _markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_point_at_existing_files_and_headings(page):
    broken = []
    for target in LINK.findall(_without_code(page.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http(s), mailto
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path) if path else page
        if not linked.exists():
            broken.append(target)
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            broken.append(target)
    assert not broken, f"{page.relative_to(REPO)} links to missing files or headings: {broken}"


def test_readme_names_every_topic_page_and_the_key_reference():
    links = {(README.parent / target.split("#", 1)[0]).resolve() for target in LINK.findall(README.read_text())}
    pages = [*TOPIC_PAGES, KEYS_MD]
    missing = [str(page.relative_to(REPO)) for page in pages if page.resolve() not in links]
    assert not missing, f"README.md does not link {missing}"


def test_errors_page_names_every_status_and_exit_code():
    from trainer import errors

    page = (REPO / "docs" / "errors-and-exit-codes.md").read_text()
    missing = [status for status in errors.STATUSES if f"`{status}`" not in page]
    codes = (0, errors.EXIT_CRASH, errors.EXIT_CONFIG, errors.EXIT_PREEMPTED, errors.EXIT_STOPPED, errors.EXIT_NO_SPACE)
    missing += [f"exit {code}" for code in codes if not re.search(rf"\| {code} \|", page)]
    assert not missing, f"docs/errors-and-exit-codes.md leaves out {missing}"
