"""The README checks itself: its shell examples that call the service and its Python examples
run against a fresh `promptserve serve` (as `make serve` starts it, on a temporary store), and
every answer must match the ``# ...`` lines printed under the command.

How an expected answer is read: a run of comment lines at the start of a line, right after a
command, is that command's answer. Under a shell command it is JSON, compared with the last JSON
document the commands since the previous answer printed; under a Python expression it is a
Python literal, compared with the expression's value. Labels and other strings must be equal;
numbers must be within TOLERANCE of the figure shown (the README rounds scores to two decimals);
lists must have the same length; an object's keys that the README leaves out are not compared;
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.service.servers import MINI_WEIGHTS, Server, start_server, stop_server

README = Path(__file__).resolve().parents[1] / "README.md"
README_URL = "http://127.0.0.1:8000"
TOLERANCE = 0.01
ANY = "…"
MARKER = "@@readme-check {}@@"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not MINI_WEIGHTS.is_file(), reason="needs the committed mini backbone"),
]


@dataclass(frozen=True)
class Block:
    language: str
    line: int  # of the opening fence, 1-based
    code: str


def read_blocks(text: str) -> list[Block]:
    blocks = []
    for match in re.finditer(r"^```(\w+)\n(.*?)^```$", text, flags=re.S | re.M):
        line = text.count("\n", 0, match.start()) + 1
        blocks.append(Block(match.group(1), line, match.group(2)))
    return blocks


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
        return [f"{where or 'value'}: README shows {expected!r}, got {actual!r}"]
    return (
        []
        if expected == actual
        else [f"{where or 'value'}: README shows {expected!r}, got {actual!r}"]
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
                raise AssertionError(f"README answer is not JSON ({exc}): {pending}") from None
            script.append(f"echo; echo '{MARKER.format(len(answers) - 1)}'")
            pending = []
        script.append(line.replace(".venv/bin/python", sys.executable).replace(README_URL, url))
    return "\n".join(script) + "\n", answers


def service_blocks() -> list[Block]:
    return [
        b
        for b in read_blocks(README.read_text(encoding="utf-8"))
        if b.language == "sh" and "curl" in b.code and README_URL in b.code
    ]


def python_blocks() -> list[Block]:
    return [b for b in read_blocks(README.read_text(encoding="utf-8")) if b.language == "python"]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Server]]:
    """A directory holding the server's store as ./store, where the examples run in order."""
    root = tmp_path_factory.mktemp("readme")
    running = start_server(
        root / "store",
        root / "server.log",
        timeout=300,
        PROMPTSERVE_MAX_BODY_BYTES=str(20 * 1024 * 1024),  # the service's defaults, not the
        PROMPTSERVE_MAX_IMAGES_PER_REQUEST="16",  # small limits of the HTTP error tests
        PROMPTSERVE_JOB_THREADS="1",
    )
    yield root, running
    stop_server(running)


def test_the_readme_has_checked_examples() -> None:
    blocks = service_blocks()
    assert len(blocks) >= 3, "the README's curl examples against the service were not found"
    for block in blocks:
        assert shell_script(block.code, README_URL)[1], f"README line {block.line}: no answer"
    assert python_blocks(), "the README's Python example was not found"


@pytest.mark.skipif(
    shutil.which("curl") is None, reason="needs curl (the README's examples use it)"
)
@pytest.mark.parametrize("block", service_blocks(), ids=lambda b: f"line{b.line}")
def test_shell_example(block: Block, workdir: tuple[Path, Server]) -> None:
    root, server = workdir
    script, answers = shell_script(block.code, server.url)
    done = subprocess.run(
        ["bash", "-c", script], cwd=root, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"README line {block.line} failed:\n{done.stdout}\n{done.stderr}"
    segments = re.split(r"@@readme-check (\d+)@@", done.stdout)
    outputs = segments[0::2][: len(answers)]
    assert len(outputs) == len(answers), done.stdout
    for index, (expected, output) in enumerate(zip(answers, outputs, strict=True)):
        documents = json_documents(output)
        assert documents, f"README line {block.line}, answer {index}: no JSON in {output!r}"
        problems = mismatches(expected, documents[-1])
        assert not problems, f"README line {block.line}, answer {index}: {problems}"


@pytest.mark.parametrize("block", python_blocks(), ids=lambda b: f"line{b.line}")
def test_python_example(
    block: Block, workdir: tuple[Path, Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    root, _ = workdir
    if not (root / "red_star.png").is_file():
        pytest.fail("the shell example that draws red_star.png did not run first")
    monkeypatch.chdir(root)
    lines = block.code.splitlines()
    tree = ast.parse(block.code)
    namespace: dict[str, Any] = {}
    checked = 0
    for statement in tree.body:
        following = []
        for line in lines[statement.end_lineno or 0 :]:
            if not is_answer(line):
                break
            following.append(line)
        if following and isinstance(statement, ast.Expr):
            value = eval(compile(ast.Expression(statement.value), "README", "eval"), namespace)
            expected = ast.literal_eval(answer_text(following))
            problems = mismatches(expected, value)
            assert not problems, f"README line {block.line + statement.lineno}: {problems}"
            checked += 1
        else:
            exec(compile(ast.Module([statement], []), "README", "exec"), namespace)
    assert checked, f"README line {block.line}: no answer to check"
