"""Mutation testing of the modules where a silent break costs users most, with mutmut.

    make mutation                                  # every group, 30 minutes in all
    MUTATION_BUDGET_S=600 make mutation            # a shorter run
    .venv/bin/python bench/mutation.py --only jobs leases --budget-s 900

mutmut changes one thing in the code at a time (a `<` into `<=`, a `True` into `False`, a call
dropped) and runs the tests that reach the changed function; a change no test notices
"survives". Each group below names the modules it mutates and the fast in-process tests that
cover them (never the subprocess end-to-end tests: a mutant is run by forking the test
process). The report, `.mutation/report.md`, lists every surviving mutant with its diff.

The layout needs one step of its own. The three folders install as `promptserve.models`,
`promptserve.training` and `promptserve.service` (pyproject's package-dir), and mutmut names a
mutant by the module path of its file, which must equal the module's `__name__` at run time.
So each group runs in `.mutation/work/<group>/`, where `src/promptserve/service` (or `models`)
links to the folder here: mutmut copies `src/` into `mutants/src/`, names the mutants
`promptserve.service...` (it strips `src.`) and puts `mutants/src` first on `sys.path`, where the
`promptserve` namespace then finds the mutated copy before the editable install's finder, which
still serves the packages the group does not mutate. `tests/` links to the tests here, and the
group's `pyproject.toml` is this project's with a `[tool.mutmut]` table added.

The budget (`MUTATION_BUDGET_S`, or `--budget-s`) is shared out over the groups, in order; time a
group leaves unused goes to the next. mutmut runs the mutants it estimates fastest first; when a
group's share runs out it is interrupted and its unfinished mutants count as "not checked".
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / ".mutation"
MUTMUT = Path(sys.executable).with_name("mutmut")


@dataclass(frozen=True)
class Group:
    name: str
    what: str
    mutate: tuple[str, ...]  # files, relative to the repository
    tests: tuple[str, ...]  # pytest arguments selecting the tests that cover them


GROUPS = (
    Group(
        "admission",
        "admission control and the body limit",
        ("service/api/middleware.py", "service/api/bodies.py"),
        ("tests/service/api/test_hardening.py", "tests/service/api/test_errors.py"),
    ),
    Group(
        "batcher",
        "the micro-batcher",
        ("service/classify/batcher.py",),
        ("tests/service/classify/test_batcher.py", "tests/service/classify/test_batch_limits.py"),
    ),
    Group(
        "store",
        "the classifier store and its versions",
        (
            "service/catalog.py",
            "service/alias_index.py",
            "models/artifact.py",
            "models/integrity.py",
        ),
        (
            "tests/models/test_artifact.py",
            "tests/service/api/test_classifiers.py",
            "tests/service/api/test_v1.py",
            "tests/cluster/test_objectstore.py",  # deletes through the mirror (moto's S3)
        ),
    ),
    Group(
        "jobs",
        "the job runner and the job process",
        ("service/jobs/runner.py", "service/jobs/job_processes.py", "service/jobs/process.py"),
        ("tests/service/jobs/test_runner_stop.py", "tests/service/jobs/test_safety.py"),
    ),
    Group(
        "leases",
        "leases and housekeeping",
        ("service/jobs/leases.py", "service/jobs/housekeeping.py"),
        (
            "tests/cluster/test_queue.py",
            "tests/service/jobs/test_jobstore.py",
            "tests/service/jobs/test_safety.py",
            "tests/service/api/test_hardening.py",
            "-k",
            "sqlite or not postgres",
        ),
    ),
    Group(
        "labels",
        "label checks",
        ("service/classify/labels.py", "models/labels.py"),
        ("tests/service/api/test_hardening.py", "tests/service/classify/test_open_vocab.py"),
    ),
)

# mutmut's verdicts, as its `results` command prints them
KILLED = {"killed", "timeout", "segfault", "caught by type check"}


def stage(group: Group) -> Path:
    """A fresh work folder for `group` (see the module's docstring)."""
    work = OUT / "work" / group.name
    shutil.rmtree(work, ignore_errors=True)
    (work / "src" / "promptserve").mkdir(parents=True)
    packages = sorted({path.split("/")[0] for path in group.mutate})
    for package in packages:
        (work / "src" / "promptserve" / package).symlink_to(REPO / package)
    (work / "tests").symlink_to(REPO / "tests")
    table = {
        "source_paths": [f"src/promptserve/{package}" for package in packages],
        "only_mutate": [f"src/promptserve/{path}" for path in group.mutate],
        "pytest_add_cli_args_test_selection": list(group.tests),
        # stop at the first failure (a kill); no random order, no cache in the linked tests; a
        # mutant that deadlocks (uses no CPU, so mutmut's CPU limit never comes) fails its test
        # after 180 s rather than the suite's 600 (a first test's session fixtures take up to a
        # minute on a loaded machine: a shorter limit would count a slow start as a kill)
        "pytest_add_cli_args": [
            "-x",
            "-p",
            "no:randomly",
            "-p",
            "no:xdist",
            "-p",
            "no:cacheprovider",
            "-q",
            "--timeout=180",
        ],
        # mutmut stops a mutant after 30 x (its tests' call time + this) CPU seconds; the call
        # time leaves out fixture set-up, and a group's first test makes session fixtures (tiny
        # classifiers exported: tens of CPU seconds), which the default of 1 s counted as a
        # timeout, and so as a kill, for nearly every mutant
        "timeout_constant": 5.0,
        "use_git_change_detection": False,
        # fork each mutant's test run from a process that has imported the tests but run none:
        # one forked from a process that ran them (the default) inherits the threads of ONNX
        # Runtime, torch and the app's pools, and hangs on a lock one of them held
        "process_isolation": "forkserver",
    }
    lines = ["", "[tool.mutmut]"] + [f"{key} = {json.dumps(value)}" for key, value in table.items()]
    text = (REPO / "pyproject.toml").read_text()
    (work / "pyproject.toml").write_text(text + "\n".join(lines) + "\n")
    return work


@dataclass
class Run:
    group: Group
    seconds: float
    interrupted: bool  # the budget ran out
    verdicts: dict[str, str]  # mutant -> mutmut's verdict
    survivors: dict[str, str]  # surviving mutant -> its diff
    log: Path

    def count(self, *statuses: str) -> int:
        return sum(status in statuses for status in self.verdicts.values())


def run_group(group: Group, budget_s: float, children: int) -> Run:
    work = stage(group)
    log = OUT / f"{group.name}.log"
    start = time.monotonic()
    with log.open("w") as sink:
        process = subprocess.Popen(
            [str(MUTMUT), "run", "--max-children", str(children)],
            cwd=work,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            process.wait(budget_s)
            interrupted = False
        except subprocess.TimeoutExpired:
            interrupted = True
            os.killpg(process.pid, signal.SIGINT)  # mutmut saves what it has and stops
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    seconds = time.monotonic() - start
    verdicts = results(work)
    survivors = {
        name: show(work, name) for name, verdict in verdicts.items() if verdict == "survived"
    }
    return Run(group, seconds, interrupted, verdicts, survivors, log)


def results(work: Path) -> dict[str, str]:
    if not (work / "mutants").is_dir():
        return {}
    done = subprocess.run(
        [str(MUTMUT), "results", "--all", "true"], cwd=work, capture_output=True, text=True
    )
    verdicts = {}
    for line in done.stdout.splitlines():
        match = re.fullmatch(r"\s+(\S+): (.+)", line)
        if match:
            verdicts[match[1]] = match[2].strip()
    return verdicts


def show(work: Path, name: str) -> str:
    done = subprocess.run([str(MUTMUT), "show", name], cwd=work, capture_output=True, text=True)
    return done.stdout.strip()


def report(runs: list[Run], budget_s: float) -> str:
    lines = [
        "# Mutation run",
        "",
        f"Budget {budget_s:.0f} s (`make mutation`, mutmut). Killed counts timeouts too.",
        "",
        "| group | mutants | tried | killed | of them timeouts | survived | no tests "
        "| not checked | time |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        killed = run.count(*KILLED)
        survived = run.count("survived")
        tried = killed + survived + run.count("suspicious")
        unchecked = run.count("not checked", "check was interrupted by user")
        note = " (budget ran out)" if run.interrupted else ""
        lines.append(
            f"| {run.group.name} | {len(run.verdicts)} | {tried} | {killed} "
            f"| {run.count('timeout')} | {survived} "
            f"| {run.count('no tests')} | {unchecked} | {run.seconds:.0f} s{note} |"
        )
    for run in runs:
        group = run.group
        lines += ["", f"## {group.name}: {group.what}", ""]
        lines.append(f"Mutates {', '.join(group.mutate)}; tests: `{' '.join(group.tests)}`.")
        if not run.verdicts:
            lines.append(f"\nNo results: see {run.log}.")
        others = sorted(n for n, s in run.verdicts.items() if s in ("no tests", "suspicious"))
        if others:
            names = ", ".join(f"`{name}`" for name in others)
            lines.append(f"\nNo test reaches these (or suspicious): {names}")
        for name, diff in sorted(run.survivors.items()):
            lines += ["", f"### {name}", "", "```diff", diff, "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    names = [group.name for group in GROUPS]
    parser.add_argument("--only", nargs="+", choices=names, help="these groups only")
    parser.add_argument(
        "--budget-s",
        type=float,
        default=float(os.environ.get("MUTATION_BUDGET_S", 1800)),
        help="seconds for the whole run (default: $MUTATION_BUDGET_S or 1800)",
    )
    parser.add_argument("--children", type=int, default=os.cpu_count() or 2)
    args = parser.parse_args(argv)
    if not MUTMUT.exists():
        print(f"{MUTMUT} is missing: make setup installs the dev extra", file=sys.stderr)
        return 2
    groups = [group for group in GROUPS if not args.only or group.name in args.only]
    OUT.mkdir(exist_ok=True)
    deadline = time.monotonic() + args.budget_s
    runs = []
    for index, group in enumerate(groups):
        share = (deadline - time.monotonic()) / (len(groups) - index)
        print(f"{group.name}: {share:.0f} s for {', '.join(group.mutate)}", flush=True)
        run = run_group(group, max(share, 30.0), args.children)
        survived = run.count("survived")
        print(
            f"  {len(run.verdicts)} mutants, {survived} survived, {run.seconds:.0f} s", flush=True
        )
        runs.append(run)
        (OUT / "report.md").write_text(report(runs, args.budget_s))
    print(f"report: {OUT / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
