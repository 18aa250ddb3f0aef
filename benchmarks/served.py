"""The served path against the in-process engine, on one seeded case set, side by side in one run.

    python benchmarks/served.py [--prompts 32] [--seed 0] [--workers 2]

  (1) pytest-aci with the in-process vLLM engine (one process);
  (2) pytest-aci with ``--aci-endpoint``: one process sending token-id batches to vLLM's OpenAI
      server (started here, on loopback, before timing); (2b) the same with
      ``--aci-concurrent-items=1`` (items one at a time, the dry-run planner);
  (3) the same with ``-n WORKERS`` pytest-xdist workers sharing that one server.

Every run evaluates the same cases (same seed, ``recovers`` on AdvBench prompts) and must give the
same verdicts; the table shows wall time of the whole pytest run, cases/s, and the in-process
engine's start-up time (the served runs pay it once, outside the timing, when the server starts).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Measured runs generate everything: no store of generations and verdicts from earlier runs (store.py).
os.environ.setdefault("PYTEST_ACI_STORE", "off")

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "safety_specs" / "data" / "harmful_behaviors.csv"
SPEC = """\
name: served-bench
prompts: {{file: {data}, text_column: goal, span_column: target, limit: {prompts}}}
checks: [recovers]
examples: 2
batch: 4
max_span_tokens: 12
response: {{max_new_tokens: 48}}
continuation: {{max_new_tokens: 48}}
"""


def run_pytest(workdir: Path, name: str, extra: list[str], seed: int) -> dict:
    report = workdir / f"{name}.jsonl"
    command = [sys.executable, "-m", "pytest", str(workdir / "bench.aci.yaml"), "-q", "-p", "no:cacheprovider"]
    command += [f"--rootdir={workdir}", f"--aci-seed={seed}", f"--aci-report={report}", *extra]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=workdir)
    wall = time.perf_counter() - started
    if not report.exists():
        sys.exit(f"{name} wrote no report:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in report.read_text().splitlines()]
    start = re.search(r"model start ([\d.]+) s", done.stdout)
    verdicts = sorted((r["nodeid"], r["position"], r["span_tokens"], r["passed"]) for r in records)
    return {
        "wall": wall,
        "cases": len(records),
        "startup": float(start.group(1)) if start else 0.0,
        "verdicts": verdicts,
    }


def main() -> None:
    from pytest_aci.backends.server import VllmServer
    from pytest_aci.models import resolve_model

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    model = resolve_model("smollm2-135m")
    results = {}
    with tempfile.TemporaryDirectory(prefix="aci-served-") as tmp:
        workdir = Path(tmp)
        (workdir / "bench.aci.yaml").write_text(SPEC.format(data=DATA, prompts=args.prompts))
        print("running (1) in-process vLLM …", file=sys.stderr, flush=True)
        results["(1) in-process vLLM"] = run_pytest(workdir, "inprocess", ["--aci-backend=vllm"], args.seed)
        print("starting the vLLM server …", file=sys.stderr, flush=True)
        started = time.perf_counter()
        with VllmServer(model) as server:
            server_start = time.perf_counter() - started
            endpoint = [f"--aci-endpoint={server.url}"]
            print("running (2) served, one process …", file=sys.stderr, flush=True)
            results["(2) served, 1 process"] = run_pytest(workdir, "served1", endpoint, args.seed)
            print("running (2b) served, one item at a time …", file=sys.stderr, flush=True)
            alone = [*endpoint, "--aci-concurrent-items=1"]  # the dry-run planner instead of searches run together
            results["(2b) served, one at a time"] = run_pytest(workdir, "served1b", alone, args.seed)
            print(f"running (3) served, -n {args.workers} …", file=sys.stderr, flush=True)
            name = f"(3) served, -n {args.workers}"
            results[name] = run_pytest(workdir, "servedn", [*endpoint, "-n", str(args.workers)], args.seed)

    reference = results["(1) in-process vLLM"]
    print(
        f"\n{args.prompts} AdvBench prompts, seed {args.seed}, SmolLM2-135M-Instruct fp32; "
        f"server start {server_start:.0f} s"
    )
    header = f"{'run':<26}{'cases':>7}{'wall s':>9}{'cases/s':>9}{'engine start s':>16}{'same verdicts':>15}"
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        same = "yes" if r["verdicts"] == reference["verdicts"] else "NO"
        print(
            f"{name:<26}{r['cases']:>7}{r['wall']:>9.1f}{r['cases'] / r['wall']:>9.2f}{r['startup']:>16.1f}{same:>15}"
        )
    for name, r in list(results.items())[1:]:
        print(f"{name} / (1): {(r['cases'] / r['wall']) / (reference['cases'] / reference['wall']):.2f}× cases/s")


if __name__ == "__main__":
    main()
