#!/usr/bin/env python3
"""Mutation run over the safety, delivery and validation code (mutants in scripts/mutants.toml).

The source tree (no .git, .venv or caches) is copied once at the start; for each mutant a
fresh copy of that snapshot is made in the work directory, the mutant's exact snippets are
replaced, and its subset of the test suite runs there with a time limit. A mutant is

  killed     some test failed (the first failing test is named),
  ALIVE      every selected test passed: the suite does not notice the broken promise,
  timeout    the run did not finish within --timeout (a hang no per-test limit caught),
  not found  a snippet is not in the file (or is there more than once): the code moved,
             update the mutant; this never counts as killed.

Before the mutants, the same copy runs unmutated with the union of the selected tests, so a
"killed" is never a test that fails anyway. The tree is copied to the same path every time,
so the numba cache in the work directory is reused for every mutant that leaves the kernel
alone.

    .venv/bin/python scripts/mutation.py                      # every mutant
    .venv/bin/python scripts/mutation.py --only limiter-hard-clips --only mqtt-acks-on-publish
    .venv/bin/python scripts/mutation.py --check              # only check that every snippet is found
    .venv/bin/python scripts/mutation.py --markdown out.md    # also write the table as Markdown

Exit status: 0 when every mutant is killed or expected alive, 1 otherwise, 2 for a bad
mutants file or a failing baseline.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
import tomllib
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MUTANTS = ROOT / "scripts" / "mutants.toml"
IGNORED = shutil.ignore_patterns(".git", ".venv", ".cache", "__pycache__", ".pytest_cache", "out", ".state",
                                 "*.pyc", "*.egg-info")


@dataclass
class Replacement:
    file: str
    old: str
    new: str


@dataclass
class Mutant:
    name: str
    behaviour: str
    tests: list[str]
    replacements: list[Replacement]
    expect: str = "killed"
    why: str = ""


@dataclass
class Outcome:
    mutant: Mutant
    result: str                      # killed, ALIVE, timeout, not found, alive (expected)
    killed_by: str = ""
    seconds: float = 0.0
    detail: list[str] = field(default_factory=list)


def load_mutants(path: Path) -> list[Mutant]:
    data = tomllib.loads(path.read_text())
    mutants, names = [], set()
    for entry in data.get("mutant", []):
        name = entry["name"]
        if name in names:
            raise SystemExit(f"{path}: mutant {name}: defined twice")
        names.add(name)
        replacements = [Replacement(r.get("file", entry.get("file")), r["old"], r["new"]) for r in entry["replace"]]
        if not replacements or any(r.file is None for r in replacements):
            raise SystemExit(f"{path}: mutant {name}: needs at least one replacement and a file for each")
        mutants.append(Mutant(name, entry["behaviour"], list(entry["tests"]), replacements,
                              entry.get("expect", "killed"), " ".join(entry.get("why", "").split())))
    return mutants


def apply(mutant: Mutant, tree: Path) -> list[str]:
    """Apply the replacements in `tree`; returns the problems (empty when applied)."""
    problems, sources = [], {}
    for replacement in mutant.replacements:
        path = tree / replacement.file
        if replacement.file not in sources:
            sources[replacement.file] = path.read_text() if path.exists() else None
        text = sources[replacement.file]
        if text is None:
            problems.append(f"{replacement.file}: file not found")
            continue
        count = text.count(replacement.old)
        if count != 1:
            first_line = replacement.old.strip().splitlines()[0]
            problems.append(f"{replacement.file}: snippet {'not found' if count == 0 else f'found {count} times'}: "
                            f"{first_line!r}")
            continue
        sources[replacement.file] = text.replace(replacement.old, replacement.new)
    if not problems:
        for name, text in sources.items():
            (tree / name).write_text(text)
    return problems


def snapshot(work: Path) -> Path:
    """The source tree as it is now: edits made while the run goes on do not leak into it."""
    source = work / "source"
    if source.exists():
        shutil.rmtree(source)
    shutil.copytree(ROOT, source, ignore=IGNORED)  # copy2 keeps mtimes: numba's cache stays valid
    return source


def copy_tree(work: Path, source: Path) -> Path:
    """A fresh copy of the snapshot, always at the same path (so numba's cache is reused)."""
    tree = work / "tree"
    if tree.exists():
        shutil.rmtree(tree)
    shutil.copytree(source, tree)
    return tree


def environment(work: Path, tree: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree)
    env["NUMBA_CACHE_DIR"] = str(work / "numba-cache")
    env.pop("PYTEST_ADDOPTS", None)
    return env


def check_imports(python: str, tree: Path, env: dict[str, str]) -> None:
    """The copy, not the editable install, must be what the tests import."""
    code = "import device, cloud_sync, simulator; print(device.__file__, cloud_sync.__file__, simulator.__file__)"
    out = subprocess.run([python, "-c", code], cwd=tree, env=env, capture_output=True, text=True, check=True).stdout
    if not all(Path(p).resolve().is_relative_to(tree.resolve()) for p in out.split()):
        raise SystemExit(f"the copy in {tree} is not what Python imports: {out.strip()}")


def run_tests(python: str, tree: Path, env: dict[str, str], tests: list[str], timeout_s: float,
              test_timeout_s: float, stop_first: bool) -> tuple[str, list[str], float]:
    """('passed' | 'failed' | 'timeout', failing test ids, seconds)."""
    report = tree / ".mutation-junit.xml"
    report.unlink(missing_ok=True)
    command = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--timeout={test_timeout_s:g}",
               f"--junitxml={report}", "-o", "addopts=", *tests]
    if stop_first:
        command.insert(4, "-x")
    started = time.monotonic()
    # Own process group: a timeout kills pytest and whatever it started (brokers, agents).
    process = subprocess.Popen(command, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.communicate()
        return "timeout", [], time.monotonic() - started
    seconds = time.monotonic() - started
    failing = []
    if report.exists():
        for case in ET.parse(report).getroot().iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failing.append(f"{case.get('classname', '').replace('.', '/')}.py::{case.get('name')}")
    if process.returncode == 0:
        return "passed", [], seconds
    if not failing:  # collection error or a crash before any test: show the end of the output
        failing = ["(no test result) " + " | ".join(output.strip().splitlines()[-3:])]
    return "failed", failing, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=Path, default=MUTANTS)
    parser.add_argument("--only", action="append", default=[], metavar="NAME", help="run only these mutants")
    parser.add_argument("--check", action="store_true", help="only check that every snippet applies")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / f"anc-mutation-{os.getuid()}")
    parser.add_argument("--python", default=str(ROOT / ".venv" / "bin" / "python"))
    parser.add_argument("--timeout", type=float, default=900.0, help="s per mutant for its whole test run")
    parser.add_argument("--test-timeout", type=float, default=120.0, help="s per test (pytest-timeout)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run")
    parser.add_argument("--markdown", type=Path, help="also write the result table here")
    args = parser.parse_args()

    mutants = load_mutants(args.mutants)
    if args.only:
        unknown = sorted(set(args.only) - {m.name for m in mutants})
        if unknown:
            print(f"mutation: unknown mutant(s): {', '.join(unknown)}", file=sys.stderr)
            return 2
        mutants = [m for m in mutants if m.name in args.only]

    args.work.mkdir(parents=True, exist_ok=True)
    source = snapshot(args.work)
    if args.check:
        bad = 0
        for mutant in mutants:
            problems = apply(mutant, copy_tree(args.work, source))
            bad += bool(problems)
            print(f"{mutant.name:45s} {'ok' if not problems else '; '.join(problems)}")
        return 1 if bad else 0

    tree = copy_tree(args.work, source)
    env = environment(args.work, tree)
    check_imports(args.python, tree, env)
    if not args.no_baseline:
        union = sorted({t for m in mutants for t in m.tests})
        print(f"baseline: {len(union)} test files, unmutated ...", flush=True)
        status, failing, seconds = run_tests(args.python, tree, env, union, args.timeout * 2, args.test_timeout,
                                             stop_first=False)
        if status != "passed":
            print(f"baseline {status} in {seconds:.0f} s: {', '.join(failing) or 'no result'}", file=sys.stderr)
            return 2
        print(f"baseline: passed in {seconds:.0f} s", flush=True)

    outcomes = []
    for index, mutant in enumerate(mutants, 1):
        tree = copy_tree(args.work, source)
        problems = apply(mutant, tree)
        if problems:
            outcome = Outcome(mutant, "not found", detail=problems)
        else:
            status, failing, seconds = run_tests(args.python, tree, env, mutant.tests, args.timeout,
                                                 args.test_timeout, stop_first=True)
            result = {"failed": "killed", "timeout": "timeout", "passed": "ALIVE"}[status]
            if result == "ALIVE" and mutant.expect == "alive":
                result = "alive (expected)"
            outcome = Outcome(mutant, result, failing[0] if failing else "", seconds)
        outcomes.append(outcome)
        extra = outcome.killed_by or "; ".join(outcome.detail)
        print(f"[{index}/{len(mutants)}] {mutant.name}: {outcome.result} {extra} ({outcome.seconds:.0f} s)", flush=True)

    table = format_table(outcomes)
    print()
    print(table)
    if args.markdown:
        args.markdown.write_text(table + "\n")
    bad = [o for o in outcomes if o.result not in ("killed", "alive (expected)")]
    return 1 if bad else 0


def format_table(outcomes: list[Outcome]) -> str:
    lines = ["| mutant | behaviour broken | killed by | result |", "|---|---|---|---|"]
    for o in outcomes:
        detail = o.killed_by
        if o.result == "not found":
            detail = "; ".join(o.detail)
        elif o.result == "alive (expected)":
            detail = o.mutant.why
        elif o.result == "timeout":
            detail = "no test failed before the run's time limit"
        lines.append(f"| `{o.mutant.name}` | {o.mutant.behaviour} | {detail.replace('|', '/')} | {o.result} |")
    counts = {}
    for o in outcomes:
        counts[o.result] = counts.get(o.result, 0) + 1
    lines.append("")
    lines.append(", ".join(f"{n} {result}" for result, n in sorted(counts.items())))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
