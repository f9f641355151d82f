"""The docs site stays true to the code: the generated reference pages are what
docs/gen_reference.py makes now, nothing the code offers goes undocumented, the artifact page
names every manifest key, and every page is in the navigation (`make docs` builds the site
strictly; see docs/development/tests.md)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

from promptserve.models.artifact import SUPPORTED_FORMATS

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_reference", DOCS / "gen_reference.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    return load_generator()


def test_reference_pages_match_the_code(generator: ModuleType) -> None:
    stale = generator.stale_pages()
    assert not stale, f"out of date: {stale}; run .venv/bin/python docs/gen_reference.py"


def test_the_check_ignores_the_callers_settings(
    generator: ModuleType, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`make docs` under a shell with settings of its own (a key, a CUDA device the machine
    lacks, a reduced precision) still checks the pages against the defaults."""
    monkeypatch.setenv("PROMPTSERVE_API_KEY", "x")
    monkeypatch.setenv("PROMPTSERVE_MAX_INFLIGHT_REQUESTS", "1")
    monkeypatch.setenv("PROMPTSERVE_DEVICE", "cuda")
    monkeypatch.setenv("PROMPTSERVE_ENGINE_PRECISION", "int8")
    assert generator.main(["--check"]) == 0, capsys.readouterr().out


def test_every_setting_has_a_description() -> None:
    from promptserve.service.settings import Settings

    bare = [name for name, field in Settings.model_fields.items() if not field.description]
    assert not bare, f"Settings fields without a description: {bare}"
    page = (DOCS / "reference" / "settings.md").read_text(encoding="utf-8")
    for name in Settings.model_fields:
        assert f"`PROMPTSERVE_{name.upper()}`" in page, name


def every_parser() -> list[tuple[str, argparse.ArgumentParser]]:
    from promptserve.service.cli import build_parser

    generator = load_generator()
    parser = build_parser()
    commands = [(f"promptserve {name}", sub) for name, _, sub in generator.subcommands(parser)]
    nested = [  # `promptserve client classify`, ...
        (f"{command} {name}", sub)
        for command, parser_ in commands
        for name, _, sub in generator.subcommands(parser_)
    ]
    return [("promptserve", parser), *commands, *nested]


def test_every_command_and_flag_has_a_help_text() -> None:
    page = (DOCS / "reference" / "cli.md").read_text(encoding="utf-8")
    missing = []
    for command, parser in every_parser():
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            flag = (action.option_strings or [action.dest])[0]
            if not (action.help or "").strip():
                missing.append(f"{command} {flag}")
            assert f"`{flag}`" in page, f"{command} {flag} is not on the CLI page"
    assert not missing, f"flags without a help text: {missing}"
    for name, text, _ in load_generator().subcommands(every_parser()[0][1]):
        assert text.strip(), f"promptserve {name} has no help text"


def codes_in_source() -> set[str]:
    """Error codes written next to an HTTP status anywhere in the service's source."""
    pattern = re.compile(r"\b[1-5]\d\d\s*[,:]\s*\"([a-z][a-z_]+)\"")
    return {
        code
        for path in (ROOT / "service").rglob("*.py")
        for code in pattern.findall(path.read_text(encoding="utf-8"))
    }


def test_every_error_code_has_a_meaning(generator: ModuleType) -> None:
    documented = generator.error_codes()
    found = codes_in_source()
    assert {"overloaded", "queue_full", "unknown_classifier", "client_disconnected"} <= found
    undocumented = sorted(found - set(documented))
    assert not undocumented, f"error codes with no meaning in service.errors: {undocumented}"
    empty = [code for code, (_, meanings) in documented.items() if not meanings]
    assert not empty, f"error codes without a meaning: {empty}"
    page = (DOCS / "reference" / "api.md").read_text(encoding="utf-8")
    for code in documented:
        assert f"| `{code}` |" in page, code


def test_the_artifact_page_names_every_manifest_key(tmp_path: Path) -> None:
    from promptserve.models.artifact import publish_classifier, read_manifest
    from promptserve.models.backbone import load_backbone
    from promptserve.models.methods import create_method

    learner = create_method("zeroshot", load_backbone("tiny"))
    version = publish_classifier(learner, ["a cat", "a dog"], tmp_path, "pets")
    page = (DOCS / "reference" / "artifact.md").read_text(encoding="utf-8")
    table = page[page.index("## The manifest") :]
    missing = [key for key in read_manifest(version) if f"`{key}`" not in table]
    assert not missing, f"manifest keys the artifact page does not describe: {missing}"
    for number in SUPPORTED_FORMATS:
        assert f"format {number}" in page, f"the artifact page does not describe format {number}"
    graph = json.loads(next((tmp_path / ".backbones").rglob("graph.json")).read_text())
    assert all(f"`{key}`" in page for key in graph if key != "inputs"), sorted(graph)


def nav_pages(entries: list[object]) -> list[str]:
    found: list[str] = []
    for entry in entries:
        values = entry.values() if isinstance(entry, dict) else [entry]
        for value in values:
            found += nav_pages(value) if isinstance(value, list) else [str(value)]
    return found


def test_every_page_is_in_the_navigation() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    listed = set(nav_pages(config["nav"]))
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert pages == listed, f"not in the nav: {pages - listed}; missing: {listed - pages}"


def test_the_readme_stays_short() -> None:
    size = (ROOT / "README.md").stat().st_size
    assert size <= 15 * 1024, f"README.md is {size} bytes: move detail into docs/"
