"""The docs check themselves: the shell and Python examples of the README and of every page
under docs/ run against a fresh `promptserve serve` (as `make serve` starts it, on a temporary
store), one server per page, block by block in the page's order, and every answer must match
the ``# ...`` lines printed under the command.

Which pages run: a page whose ``sh`` blocks call the service (name http://127.0.0.1:8000) or
that has a ``python`` block. On such a page every ``sh`` and ``python`` block runs, except one
preceded by ``<!-- not-run: why -->``; the reason is required.

How an expected answer is read: a run of comment lines at the start of a line, right after a
command, is that command's answer. Under a shell command it is JSON, compared with the last JSON
document the commands since the previous answer printed; under a Python expression it is a
Python literal, compared with the expression's value. Labels and other strings must be equal;
numbers must be within TOLERANCE of the figure shown (the docs round scores to two decimals);
lists must have the same length; an object's keys that the page leaves out are not compared;
the string "…" stands for any value.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.service.servers import Server, copy_store, start_server, stop_server

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
DOCS_URL = "http://127.0.0.1:8000"
TOLERANCE = 0.01
ANY = "…"
MARKER = "@@docs-check {}@@"
NOT_RUN = re.compile(r"<!-- not-run: (?P<why>[^>]*?) -->\n*$")

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Block:
    page: str  # relative to the repository
    language: str
    line: int  # of the opening fence, 1-based
    code: str
    not_run: str | None  # why it is not executed, from the comment above it

    @property
    def where(self) -> str:
        return f"{self.page} line {self.line}"

    @property
    def calls_service(self) -> bool:
        return self.language == "python" or (self.language == "sh" and DOCS_URL in self.code)


def read_blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    name = page.relative_to(ROOT).as_posix()
    blocks = []
    for match in re.finditer(r"^```(\w+)\n(.*?)^```$", text, flags=re.S | re.M):
        line = text.count("\n", 0, match.start()) + 1
        skip = NOT_RUN.search(text, 0, match.start())
        why = skip.group("why") if skip and skip.end() == match.start() else None
        blocks.append(Block(name, match.group(1), line, match.group(2), why))
    return blocks


def page_examples(page: Path) -> list[Block]:
    """The blocks of `page` that run, in order: none unless one calls the service."""
    blocks = [b for b in read_blocks(page) if b.language in ("sh", "python")]
    if not any(b.calls_service and b.not_run is None for b in blocks):
        return []
    return [b for b in blocks if b.not_run is None]


def all_examples() -> list[Block]:
    return [block for page in PAGES for block in page_examples(page)]


def is_answer(line: str) -> bool:
    return line.startswith("#")


def answer_text(lines: list[str]) -> str:
    return " ".join(line[1:].strip() for line in lines)


def mismatches(expected: Any, actual: Any, where: str = "") -> list[str]:
    """Where `actual` departs from `expected` under the rules of the module docstring."""
    if expected == ANY:
        return []
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{where or 'value'}: expected an object, got {actual!r}"]
        found = []
        for key, value in expected.items():
            if key not in actual:
                found.append(f"{where}.{key}: missing")
            else:
                found += mismatches(value, actual[key], f"{where}.{key}")
        return found
    if isinstance(expected, list | tuple):
        if not isinstance(actual, list | tuple) or len(actual) != len(expected):
            return [f"{where or 'value'}: expected {expected!r}, got {actual!r}"]
        return [
            m for i, e in enumerate(expected) for m in mismatches(e, actual[i], f"{where}[{i}]")
        ]
    numbers = (int, float)
    if isinstance(expected, numbers) and not isinstance(expected, bool):
        if isinstance(actual, numbers) and abs(float(actual) - expected) <= TOLERANCE:
            return []
        return [f"{where or 'value'}: the docs show {expected!r}, got {actual!r}"]
    return (
        []
        if expected == actual
        else [f"{where or 'value'}: the docs show {expected!r}, got {actual!r}"]
    )


def json_documents(text: str) -> list[Any]:
    decoder = json.JSONDecoder()
    documents, index = [], 0
    while index < len(text):
        start = min(
            (i for i in (text.find("{", index), text.find("[", index)) if i >= 0), default=-1
        )
        if start < 0:
            break
        try:
            value, index = decoder.raw_decode(text, start)
        except ValueError:
            index = start + 1
            continue
        documents.append(value)
    return documents


def shell_script(code: str, url: str) -> tuple[str, list[Any]]:
    """The block as a bash script that prints a marker where each answer is shown, and the
    answers (parsed JSON) in order."""
    lines = code.splitlines()
    script, answers, pending = ["set -eo pipefail"], [], []
    for line in [*lines, ""]:
        if is_answer(line) and not (script and script[-1].endswith("\\")):
            pending.append(line)
            continue
        if pending:
            try:
                answers.append(json.loads(answer_text(pending)))
            except ValueError as exc:
                raise AssertionError(f"answer is not JSON ({exc}): {pending}") from None
            script.append(f"echo; echo '{MARKER.format(len(answers) - 1)}'")
            pending = []
        script.append(local_command(line).replace(DOCS_URL, url))
    return "\n".join(script) + "\n", answers


def local_command(line: str) -> str:
    """A docs command line as it runs here: the docs' .venv is this interpreter's."""
    promptserve = f"{sys.executable} -m promptserve.service.cli"
    line = line.replace(".venv/bin/python", sys.executable)  # first: it holds .venv/bin/python
    return line.replace(".venv/bin/promptserve", promptserve)


SERVER_ENV = {
    "PROMPTSERVE_MAX_BODY_BYTES": str(20 * 1024 * 1024),  # the service's defaults, not the
    "PROMPTSERVE_MAX_IMAGES_PER_REQUEST": "16",  # small limits of the HTTP tests
    "PROMPTSERVE_JOB_THREADS": "1",
}


@contextmanager
def page_server(template: Path, directory: Path) -> Iterator[Server]:
    """A fresh server for one page, on a copy of the session's mini template store (the store
    a first `make serve` leaves: the default classifier created) in `directory`."""
    store = copy_store(template, directory / "store")
    server = start_server(store, directory / "server.log", timeout=300, **SERVER_ENV)
    try:
        yield server
    finally:
        stop_server(server)


def test_the_docs_have_checked_examples() -> None:
    examples = all_examples()
    pages = {b.page for b in examples}
    assert "README.md" in pages, "the README's examples against the service were not found"
    assert len(pages) >= 5, f"only {sorted(pages)} have examples that run"
    for page in pages:
        blocks = [b for b in examples if b.page == page]
        answers = sum(
            len(shell_script(b.code, DOCS_URL)[1]) if b.language == "sh" else 1 for b in blocks
        )
        assert answers, f"{page}: its examples show no answer to check"


def test_examples_that_do_not_run_say_why() -> None:
    for page in PAGES:
        for block in read_blocks(page):
            if block.not_run is not None:
                assert block.not_run.strip(), f"{block.where}: not-run needs a reason"


def executed_pages() -> list[str]:
    return sorted({block.page for block in all_examples()})


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl (the examples use it)")
@pytest.mark.parametrize("page", executed_pages())
def test_page_examples(
    page: str, mini_template_store: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A page's examples, block by block in its order, against a server of its own: a page
    builds on its earlier blocks (a file written, a job started), never on another page."""
    blocks = page_examples(ROOT / page)
    monkeypatch.chdir(tmp_path)
    with page_server(mini_template_store, tmp_path) as server:
        for block in blocks:
            if block.language == "sh":
                run_shell(block, tmp_path, server)
            else:
                run_python(block, server)


def run_shell(block: Block, root: Path, server: Server) -> None:
    script, answers = shell_script(block.code, server.url)
    done = subprocess.run(
        ["bash", "-c", script], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{block.where} failed:\n{done.stdout}\n{done.stderr}"
    segments = re.split(r"@@docs-check (\d+)@@", done.stdout)
    outputs = segments[0::2][: len(answers)]
    assert len(outputs) == len(answers), done.stdout
    for index, (expected, output) in enumerate(zip(answers, outputs, strict=True)):
        documents = json_documents(output)
        assert documents, f"{block.where}, answer {index}: no JSON in {output!r}"
        problems = mismatches(expected, documents[-1])
        assert not problems, f"{block.where}, answer {index}: {problems}"


def run_python(block: Block, server: Server) -> None:
    code = block.code.replace(DOCS_URL, server.url)
    lines = code.splitlines()
    tree = ast.parse(code)
    namespace: dict[str, Any] = {}
    checked = 0
    for statement in tree.body:
        following = []
        for line in lines[statement.end_lineno or 0 :]:
            if not is_answer(line):
                break
            following.append(line)
        if following and isinstance(statement, ast.Expr):
            value = eval(compile(ast.Expression(statement.value), block.page, "eval"), namespace)
            expected = ast.literal_eval(answer_text(following))
            problems = mismatches(expected, value)
            assert not problems, f"{block.page} line {block.line + statement.lineno}: {problems}"
            checked += 1
        else:
            exec(compile(ast.Module([statement], []), block.page, "exec"), namespace)
    assert checked, f"{block.where}: no answer to check"
