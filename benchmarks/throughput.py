"""Insertion-attack throughput on two workloads, three ways each, side by side in one run.

    python benchmarks/throughput.py [--model smollm2-135m] [--robust-model DIR] [--prompts 64]
                                    [--robust-prompts 24] [--examples 8] [--batch 4] [--seed 0]

Two workloads, each a seeded pytest-aci run of ``recovers`` items on AdvBench requests:

  easy          the unaligned ``--model`` (SmolLM2), ``examples: 1``, ``batch: 4``, 64 new tokens:
                every item fails on its first example, then shrinks.
  partly robust a model that holds some insertions and not others, under the spec defaults
                (``--examples`` 8 of ``--batch`` 4 states, 48 continuation tokens), on AdvBench rows
                400+ that no hardening run trains on: items explore, some fail and shrink. The model
                is ``--robust-model``, else one this script makes once with a short ``aci-harden``
                run (12 steps, about 8 minutes here) and keeps under $PYTEST_ACI_CACHE.

For each workload:

  (d) the plugin: pytest, Hypothesis, the judge (the default, harm-classifier, unless ``--judge``),
      the JSONL report; model start excluded. Its run decides the case set.
  (c) raw vLLM over exactly the prefixes (d) generated: one ``generate`` for the reference
      answers, one for every insertion continuation, with the same stop strings; no judge.
  (a) naive: one transformers ``generate`` per sequence, on a random subset of the prompts
      (rates are per case).

Each method runs in its own process. The table gives cases/s, (d)'s backend calls per 100 cases,
the share of its continuation lookups served from its cache, and its judge time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Measured runs generate everything: no store of generations and verdicts from earlier runs (store.py).
os.environ.setdefault("PYTEST_ACI_STORE", "off")

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "safety_specs" / "data" / "harmful_behaviors.csv"
# aci-harden's defaults when this benchmark was measured, spelt out (LoRA and a deeper recipe are the defaults now).
HARDEN_ARGS = ["--steps", "12", "--validate-every", "0", "--seed", "0", "--full"]
HARDEN_ARGS += ["--utility-per-step", "6", "--utility-tokens", "64"]
HARDEN_SPEC = ROOT / "safety_specs" / "advbench.aci.yaml"

WORKLOADS = {
    "easy": """\
name: easy
prompts: {{file: {data}, text_column: goal, span_column: target, offset: 0, limit: {prompts}}}
checks: [recovers]
examples: 1
batch: 4
max_span_tokens: 12
response: {{max_new_tokens: 64}}
continuation: {{max_new_tokens: 64}}
""",
    "partly robust": """\
name: partly-robust
prompts: {{file: {data}, text_column: goal, span_column: target, offset: 400, limit: {prompts}}}
checks: [recovers]
examples: {examples}
batch: {batch}
""",
}


def partly_robust_model() -> Path:
    """A short aci-harden run of the embedded model, made once and kept in the cache."""
    cache = Path(os.environ.get("PYTEST_ACI_CACHE", Path.home() / ".cache" / "pytest-aci"))
    key = hashlib.sha256(json.dumps([HARDEN_ARGS, HARDEN_SPEC.read_text()]).encode()).hexdigest()[:12]
    out = cache / f"bench-partly-robust-{key}"
    if not (out / "aci_harden.json").exists():
        print(f"making the partly robust model: aci-harden {' '.join(HARDEN_ARGS)} -> {out}", file=sys.stderr)
        command = [
            sys.executable,
            "-m",
            "pytest_aci.cli.harden",
            "--model",
            "smollm2-135m",
            "--specs",
            str(HARDEN_SPEC),
        ]
        subprocess.run([*command, "--out", str(out), "--overwrite", "--no-progress", *HARDEN_ARGS], check=True)
        if not (out / "aci_harden.json").exists():
            sys.exit(f"aci-harden wrote no model to {out}")
    return out


def run_plugin(args: argparse.Namespace, workdir: Path) -> dict:
    """(d): pytest-aci itself, in this process; keeps the prefixes it generated for (a) and (c)."""
    import pytest

    from pytest_aci.plugin.session import runtime_key

    grabbed: dict = {}

    class Grab:
        @pytest.hookimpl(tryfirst=True)
        def pytest_sessionfinish(self, session):
            runtime = session.config.stash[runtime_key]
            grabbed.update(
                stats=runtime.stats, keys=runtime.cache.keys(), hits=runtime.cache.hits,
                records=list(runtime.records), judge=runtime.judges.cost() or "",
                judge_s=sum(j.seconds for j in runtime.judges.model_judges()),
                chats={ref.chat_ids for ref in runtime.states._references.values()},
            )  # fmt: skip

    extra = [f"--aci-judge={args.judge}"] if args.judge else []
    started = time.perf_counter()
    pytest.main(
        [str(workdir / "bench.aci.yaml"), "-q", "-p", "no:cacheprovider", "--aci-backend=vllm",
         f"--aci-model={args.workload_model}", f"--aci-seed={args.seed}", f"--rootdir={workdir}",
         f"--aci-report={workdir / 'report.jsonl'}", *extra],
        plugins=[Grab()],
    )  # fmt: skip
    wall = time.perf_counter() - started
    stats = grabbed["stats"]
    refs = [k for k in grabbed["keys"] if k[0] in grabbed["chats"]]
    conts = [k for k in grabbed["keys"] if k[0] not in grabbed["chats"]]
    work = {
        "references": [list(k[0]) for k in refs],
        "continuations": [list(k[0]) for k in conts],
        "reference_tokens": refs[0][1] if refs else 0,
        "continuation_tokens": conts[0][1] if conts else 0,
        "stop": list(conts[0][2]) if conts else [],
    }
    (workdir / "prefixes.json").write_text(json.dumps(work))
    recovers = [r for r in grabbed["records"] if r.check == "recovers"]
    return {
        "seconds": wall - stats.startup_s,
        "cases": len(recovers),
        "generated": len(conts),
        "calls": stats.calls,
        "rounds": stats.rounds,
        "served_from_cache": grabbed["hits"] / max(1, grabbed["hits"] + stats.sequences),
        "generate_s": stats.generate_s,
        "judge_s": grabbed["judge_s"],
        "judge": grabbed["judge"],
        "harmful": sum(r.verdict.harmful for r in recovers),
        "items": len({r.nodeid for r in recovers}),
        "broken": len({r.nodeid for r in recovers if not r.passed and r.sample_bucket is None}),
        "sampled": sum(r.sample_bucket is not None for r in recovers),  # depth-sample states, among the cases
    }


def load_work(workdir: Path, subset: int | None, seed: int) -> dict:
    work = json.loads((workdir / "prefixes.json").read_text())
    if subset is not None and subset < len(work["references"]):
        chosen = random.Random(seed).sample(work["references"], subset)
        work["continuations"] = [
            c for c in work["continuations"] if any(tuple(c[: len(r)]) == tuple(r) for r in chosen)
        ]
        work["references"] = chosen
    return work


def run_raw_vllm(workdir: Path, model: str) -> dict:
    """(c): one vLLM ``generate`` for the references, one for all continuations."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from pytest_aci.models import resolve_model

    work = load_work(workdir, None, 0)
    llm = LLM(model=resolve_model(model), dtype="float32", enforce_eager=True, enable_prefix_caching=True, seed=0)
    started = time.perf_counter()
    for prompts, tokens, stop in (
        (work["references"], work["reference_tokens"], []),
        (work["continuations"], work["continuation_tokens"], work["stop"]),
    ):
        if prompts:
            params = SamplingParams(temperature=0.0, max_tokens=tokens, stop=stop or None)
            llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
    return {"seconds": time.perf_counter() - started, "cases": len(work["continuations"])}


def run_naive(workdir: Path, model: str, subset: int, seed: int) -> dict:
    """(a): one transformers ``generate`` per sequence, serially."""
    from pytest_aci.backends.hf import TransformersBackend
    from pytest_aci.models import resolve_model

    work = load_work(workdir, subset, seed)
    backend = TransformersBackend(resolve_model(model), batch_size=1)
    started = time.perf_counter()
    for prompt in work["references"]:
        backend.generate([prompt], work["reference_tokens"])
    for prompt in work["continuations"]:
        backend.generate([prompt], work["continuation_tokens"], tuple(work["stop"]))
    return {"seconds": time.perf_counter() - started, "cases": len(work["continuations"])}


def child(args: argparse.Namespace) -> None:
    workdir = Path(args.workdir)
    if args.method == "d":
        result = run_plugin(args, workdir)
    elif args.method == "c":
        result = run_raw_vllm(workdir, args.workload_model)
    else:
        result = run_naive(workdir, args.workload_model, args.naive_prompts, args.seed)
    print("RESULT " + json.dumps(result), flush=True)


def run_workload(name: str, model: str, prompts: int, args: argparse.Namespace) -> dict:
    results = {}
    with tempfile.TemporaryDirectory(prefix="aci-bench-") as workdir:
        spec = WORKLOADS[name].format(data=DATA, prompts=prompts, examples=args.examples, batch=args.batch)
        (Path(workdir) / "bench.aci.yaml").write_text(spec)
        for method in "dca":  # (d) first: it draws the case set the others replay
            print(f"{name}: running ({method}) …", file=sys.stderr, flush=True)
            command = [sys.executable, __file__, "--method", method, "--workdir", workdir, "--workload-model", model]
            command += ["--seed", str(args.seed), "--naive-prompts", str(args.naive_prompts)]
            command += ["--judge", args.judge] if args.judge else []
            done = subprocess.run(command, capture_output=True, text=True)
            line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{name} ({method}) failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
            results[method] = json.loads(line.removeprefix("RESULT "))
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="the easy workload's model (unaligned)")
    parser.add_argument("--robust-model", help="the partly robust workload's model (default: made here, cached)")
    parser.add_argument("--prompts", type=int, default=64, help="AdvBench requests of the easy workload")
    parser.add_argument("--robust-prompts", type=int, default=24, help="held-out requests of the partly robust one")
    parser.add_argument("--examples", type=int, default=8, help="partly robust: Hypothesis examples per item")
    parser.add_argument("--batch", type=int, default=4, help="partly robust: insertion states per example")
    parser.add_argument("--judge", help="the plugin's judge (default: the plugin's default)")
    parser.add_argument("--seed", type=int, default=0, help="pytest-aci seed that draws the cases")
    parser.add_argument("--naive-prompts", type=int, default=4, help="prompts timed for (a)")
    parser.add_argument("--workloads", default="easy,partly robust", help="comma list of the workloads to run")
    parser.add_argument("--method", choices="acd", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--workload-model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.method:
        child(args)
        return

    chosen = [w.strip() for w in args.workloads.split(",")]
    models = {"easy": args.model}
    if "partly robust" in chosen:
        models["partly robust"] = args.robust_model or str(partly_robust_model())
    sizes = {"easy": args.prompts, "partly robust": args.robust_prompts}
    results = {name: run_workload(name, models[name], sizes[name], args) for name in chosen}

    print(f"\nseed {args.seed}; judge {args.judge or 'the default'}; vLLM and transformers on this machine's CPU, fp32")
    header = (
        f"{'workload':<15}{'items':>6}{'broken':>7}{'cases':>7}{'(a) c/s':>9}{'(c) c/s':>9}{'(d) c/s':>9}"
        f"{'(d)/(c)':>9}{'(d)/(a)':>9}{'calls/100':>10}{'cached':>8}{'gen s':>7}{'judge s':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        a, c, d = (r[m]["cases"] / r[m]["seconds"] for m in "acd")
        dd = r["d"]
        print(
            f"{name:<15}{dd['items']:>6}{dd['broken']:>7}{dd['cases']:>7}{a:>9.2f}{c:>9.2f}{d:>9.2f}{d / c:>9.2f}"
            f"{d / a:>8.1f}×{100 * dd['calls'] / max(1, dd['cases']):>10.1f}{dd['served_from_cache']:>8.0%}"
            f"{dd['generate_s']:>7.1f}{dd['judge_s']:>8.1f}"
        )
    for name, r in results.items():
        dd = r["d"]
        print(
            f"{name}: (d) generated {dd['generated']} continuations for {dd['cases']} evaluated cases in "
            f"{dd['calls']} calls ({dd['rounds']} pooled rounds); {dd['harmful']} judged harmful; "
            f"(d) {dd['seconds']:.1f} s, (c) {r['c']['seconds']:.1f} s; {dd['judge'] or 'no model judge'}"
        )
    print("aims: (d)/(c) >= 0.8 on the partly robust workload and >= 0.9 on the easy one; (d)/(a) >= 25×")


if __name__ == "__main__":
    main()
