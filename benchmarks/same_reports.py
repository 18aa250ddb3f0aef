"""Same seed, same reports: the runs of another revision and of this working tree compared byte for byte.

A refactoring must not change what the tool measures. Each run below is made twice, at ``--base`` (checked
out as a git worktree) and here, with the persistent store off (every generation and verdict is computed
again), and the JSONL reports must be byte-identical.

    python benchmarks/same_reports.py --base bb7144e                   # held-out and quick (about 10 min here)
    python benchmarks/same_reports.py --base bb7144e --run demo        # the demo's five reports (about 25 min)

Runs:

- ``quick``: ``safety_specs/example.aci.yaml`` on the embedded SmolLM2, seed 1, the refusal-keywords judge.
- ``held-out``: the held-out specs ``aci-harden --evaluate`` writes (4 harmful and 4 benign requests no training
  step used), on the shipped deep adapter, seed 5, the default judge (harm-classifier).
- ``demo``: ``aci demo`` (five models, two families, seed 1): its five reports.

Exit status 0 when every report is the same; 1 when one differs (the first differing line of each is printed).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTEST = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--tb=no", "--aci-no-cache"]
RUNS = ("quick", "held-out", "demo")


def commands(run: str, out: Path) -> list[list[str]]:
    """The commands of a run, made in a revision's root with its reports under ``out``."""
    if run == "quick":
        return [
            [*PYTEST, "safety_specs/example.aci.yaml", "--aci-model=smollm2-135m", "--aci-seed=1"]
            + ["--aci-judge=refusal-keywords", f"--aci-report={out / 'quick.jsonl'}"]
        ]
    if run == "held-out":
        write = "from pathlib import Path; from pytest_aci.harden.evaluate import evaluation_specs as w; "
        write += f"w(Path({str(out)!r}), 4)"
        specs = [str(out / "heldout-harmful.aci.yaml"), str(out / "heldout-benign.aci.yaml")]
        return [
            [sys.executable, "-c", write],
            [*PYTEST, *specs, "--aci-model=smollm2-135m-deep", "--aci-seed=5", f"--aci-report={out / 'held-out.jsonl'}"]
            + [f"--rootdir={out}"],
        ]
    if run == "demo":
        demo = [sys.executable, "-m", "pytest_aci.cli.aci", "demo", "--out", str(out / "demo")]
        return [demo + ["--", "--aci-no-cache"]]
    raise SystemExit(f"same_reports: unknown run {run!r} (choose from {', '.join(RUNS)})")


def make_runs(tree: Path, runs: list[str], out: Path) -> None:
    """Every command of ``runs`` with ``tree``'s pytest_aci first on the path, in ``tree``."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTEST_ADDOPTS": ""}
    env.pop("PYTEST_ACI_DEFAULT_JUDGE", None)
    out.mkdir(parents=True, exist_ok=True)
    where = subprocess.run(
        [sys.executable, "-c", "import pytest_aci; print(pytest_aci.__file__)"], cwd=tree, env=env, text=True,
        capture_output=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert Path(where).resolve().is_relative_to(tree.resolve()), f"{tree}: pytest_aci imports from {where}"
    for run in runs:
        for command in commands(run, out):
            shown = " ".join(a for a in command[1:] if not a.startswith("-"))[:100]
            print(f"same_reports: {tree.name}: {run}: {shown} …", flush=True)
            done = subprocess.run(command, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if done.returncode not in (0, 1):
                raise SystemExit(
                    f"same_reports: {tree}: {command} ended with {done.returncode}:\n{done.stderr[-2000:]}"
                )


def first_difference(a: Path, b: Path) -> str | None:
    """None when the files are byte-identical, else where they first differ."""
    if not a.is_file() or not b.is_file():
        return f"{a if not a.is_file() else b}: missing"
    left, right = a.read_bytes(), b.read_bytes()
    if left == right:
        return None
    for number, (x, y) in enumerate(zip(left.splitlines(), right.splitlines()), 1):
        if x != y:
            return f"line {number}:\n  base: {x[:300]!r}\n  here: {y[:300]!r}"
    return f"one has {abs(len(left.splitlines()) - len(right.splitlines()))} more lines"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="the revision to compare with (a commit, tag or branch)")
    parser.add_argument("--run", action="append", choices=RUNS, help="repeatable (default: quick and held-out)")
    parser.add_argument("--out", type=Path, help="where both revisions' reports go (default: a temporary folder)")
    args = parser.parse_args(argv)
    runs = args.run or ["quick", "held-out"]
    out = args.out or Path(tempfile.mkdtemp(prefix="same-reports-"))
    base_tree = out / "base-tree"
    subprocess.run(["git", "worktree", "add", "--detach", str(base_tree), args.base], cwd=ROOT, check=True)
    try:
        make_runs(base_tree, runs, out / "base")
        make_runs(ROOT, runs, out / "here")
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(base_tree)], cwd=ROOT, check=False)
    reports = sorted(p.relative_to(out / "base") for p in (out / "base").rglob("*.jsonl"))
    differing = 0
    for report in reports:
        difference = first_difference(out / "base" / report, out / "here" / report)
        print(f"{report}: {'the same' if difference is None else 'DIFFERS at ' + difference}")
        differing += difference is not None
    print(f"same_reports: {len(reports) - differing} of {len(reports)} reports byte-identical ({out})")
    return 1 if differing or not reports else 0


if __name__ == "__main__":
    sys.exit(main())
