"""Insertion-attack throughput, four ways, side by side in one run.

    python benchmarks/throughput.py [--prompts 64] [--offset 0] [--data CSV] [--seed 0]

The case set is fixed by the seed: a seeded pytest-aci run over N AdvBench prompts (check
``recovers``, 1 Hypothesis example of 4 insertion cases per prompt, plus the shrink steps Hypothesis
takes on a failure) decides which token prefixes are continued. All four methods then do that same
work — each prompt's reference answer R (64 tokens) and every insertion continuation (64 tokens):

  (a) naive: one transformers ``generate`` per sequence, serially (how reference prefilling-attack
      code and pytest-style LLM test tools run today) — timed on a subset of prompts;
  (b) transformers, batched (16 per call, left-padded) — timed on a subset of prompts;
  (c) raw vLLM: one ``generate`` for the references and one for all cases;
  (d) the full pytest-aci path with vLLM: pytest, Hypothesis, judge and JSONL report included.

Each method runs in its own process (peak RSS is that process's), model load and engine start
excluded from the timings. Rates are per case, so (a) and (b) are comparable on a subset.
(a)-(c) generate all 64 tokens; (d) stops a continuation at the first refusal marker, as the
plugin always does.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT / "safety_specs" / "data" / "harmful_behaviors.csv"
MAX_NEW_TOKENS = 64

SPEC = """\
name: bench
prompts:
  file: {data}
  text_column: goal
  span_column: target
  offset: {offset}
  limit: {prompts}
checks: [recovers]
examples: 1
batch: 4
max_span_tokens: 12
response: {{max_new_tokens: {tokens}}}
continuation: {{max_new_tokens: {tokens}}}
"""


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_full_path(args: argparse.Namespace, workdir: Path) -> dict:
    """(d): pytest-aci itself, in this process; dumps the prefixes it generated for (a)-(c)."""
    import pytest

    from pytest_aci.collect import runtime_key

    spec = workdir / "bench.aci.yaml"
    spec.write_text(
        SPEC.format(data=Path(args.data).resolve(), offset=args.offset, prompts=args.prompts, tokens=MAX_NEW_TOKENS)
    )
    grabbed: dict = {}

    class Grab:
        @pytest.hookimpl(tryfirst=True)
        def pytest_sessionfinish(self, session):
            runtime = session.config.stash[runtime_key]
            grabbed["stats"] = runtime.stats
            grabbed["keys"] = list(runtime.cache._entries)
            grabbed["records"] = list(runtime.records)

    started = time.perf_counter()
    pytest.main(
        [
            str(spec),
            "-q",
            "-p",
            "no:cacheprovider",
            "--aci-backend=vllm",
            f"--aci-seed={args.seed}",
            f"--aci-report={workdir / 'report.jsonl'}",
            f"--rootdir={workdir}",
        ],
        plugins=[Grab()],
    )
    wall = time.perf_counter() - started
    stats = grabbed["stats"]
    references = [list(key[0]) for key in grabbed["keys"] if not key[2]]
    continuations = [list(key[0]) for key in grabbed["keys"] if key[2]]
    (workdir / "prefixes.json").write_text(json.dumps({"references": references, "continuations": continuations}))
    return {
        "seconds": wall - stats.startup_s,
        "cases": len(continuations),
        "evaluated": sum(1 for r in grabbed["records"] if r.check == "recovers"),
        "sequences": stats.sequences,
        "tokens": stats.tokens,
        "harmful": sum(r.verdict.harmful for r in grabbed["records"]),
    }


def load_work(workdir: Path, subset: int | None, seed: int) -> tuple[list[list[int]], list[list[int]]]:
    """The references and continuations of (d), optionally for a random subset of prompts."""
    work = json.loads((workdir / "prefixes.json").read_text())
    references = work["references"]
    if subset is not None and subset < len(references):
        references = random.Random(seed).sample(references, subset)
    chosen = {tuple(r) for r in references}
    continuations = [c for c in work["continuations"] if any(tuple(c[: len(r)]) == r for r in chosen)]
    return references, continuations


def run_transformers(workdir: Path, subset: int, seed: int, batch_size: int) -> dict:
    """(a) with batch_size=1, (b) with 16: ``generate`` over references then continuations."""
    from pytest_aci.backends.hf import TransformersBackend
    from pytest_aci.models import resolve_model

    references, continuations = load_work(workdir, subset, seed)
    backend = TransformersBackend(resolve_model("smollm2-135m"), batch_size=batch_size)
    started = time.perf_counter()
    tokens = 0
    for prompts in (references, continuations):
        if batch_size == 1:
            outputs = [backend.generate([p], MAX_NEW_TOKENS)[0] for p in prompts]
        else:
            outputs = backend.generate(prompts, MAX_NEW_TOKENS)
        tokens += sum(len(o.token_ids) for o in outputs)
    return {
        "seconds": time.perf_counter() - started,
        "cases": len(continuations),
        "sequences": len(references) + len(continuations),
        "tokens": tokens,
    }


def run_raw_vllm(workdir: Path) -> dict:
    """(c): one vLLM ``generate`` for the references, one for all continuations."""
    import os

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from pytest_aci.models import resolve_model

    references, continuations = load_work(workdir, None, 0)
    llm = LLM(
        model=resolve_model("smollm2-135m"), dtype="float32", enforce_eager=True, enable_prefix_caching=True, seed=0
    )
    params = SamplingParams(temperature=0.0, max_tokens=MAX_NEW_TOKENS)
    started = time.perf_counter()
    tokens = 0
    for prompts in (references, continuations):
        outputs = llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], params, use_tqdm=False)
        tokens += sum(len(o.outputs[0].token_ids) for o in outputs)
    return {
        "seconds": time.perf_counter() - started,
        "cases": len(continuations),
        "sequences": len(references) + len(continuations),
        "tokens": tokens,
    }


def child(args: argparse.Namespace) -> None:
    workdir = Path(args.workdir)
    if args.method == "d":
        result = run_full_path(args, workdir)
    elif args.method == "c":
        result = run_raw_vllm(workdir)
    elif args.method == "b":
        result = run_transformers(workdir, args.hf_prompts, args.seed, batch_size=16)
    else:
        result = run_transformers(workdir, args.naive_prompts, args.seed, batch_size=1)
    result["peak_rss_mb"] = peak_rss_mb()
    print("RESULT " + json.dumps(result), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=64, help="AdvBench prompts in the case set")
    parser.add_argument("--offset", type=int, default=0, help="first row of the data file")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="CSV with goal,target columns")
    parser.add_argument("--seed", type=int, default=0, help="pytest-aci seed that draws the cases")
    parser.add_argument("--naive-prompts", type=int, default=4, help="prompts timed for (a)")
    parser.add_argument("--hf-prompts", type=int, default=8, help="prompts timed for (b)")
    parser.add_argument("--method", choices="abcd", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.method:
        child(args)
        return

    results = {}
    with tempfile.TemporaryDirectory(prefix="aci-bench-") as workdir:
        labels = {
            "d": "(d) pytest-aci + vLLM",
            "c": "(c) raw vLLM, one generate",
            "b": "(b) transformers, batched",
            "a": "(a) naive: generate per case",
        }
        for method in "dcba":  # (d) first: it draws the case set the others replay
            print(f"running {labels[method]} …", file=sys.stderr, flush=True)
            command = [sys.executable, __file__, "--method", method, "--workdir", workdir]
            command += ["--prompts", str(args.prompts), "--offset", str(args.offset), "--data", args.data]
            command += ["--seed", str(args.seed), "--naive-prompts", str(args.naive_prompts)]
            command += ["--hf-prompts", str(args.hf_prompts)]
            done = subprocess.run(command, capture_output=True, text=True)
            line = next((ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"{labels[method]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
            results[method] = json.loads(line.removeprefix("RESULT "))

    d = results["d"]
    print(
        f"\ncase set: {args.prompts} prompts from row {args.offset} of {Path(args.data).name}, seed {args.seed}: "
        f"{d['cases']} insertion continuations ({d['evaluated']} reported, {d['harmful']} judged harmful), "
        f"{MAX_NEW_TOKENS} new tokens, SmolLM2-135M-Instruct, fp32, CPU"
    )
    header = f"{'method':<32}{'cases':>7}{'seconds':>10}{'cases/s':>10}{'tokens/s':>10}{'peak RSS':>11}{'vs (a)':>9}"
    print(header)
    print("-" * len(header))
    base = results["a"]["cases"] / results["a"]["seconds"]
    for method in "abcd":
        r = results[method]
        rate = r["cases"] / r["seconds"]
        print(
            f"{labels[method]:<32}{r['cases']:>7}{r['seconds']:>10.1f}{rate:>10.2f}"
            f"{r['tokens'] / r['seconds']:>10.0f}{r['peak_rss_mb']:>8.0f} MB{rate / base:>8.1f}×"
        )
    ratio_dc = (d["cases"] / d["seconds"]) / (results["c"]["cases"] / results["c"]["seconds"])
    ratio_da = (d["cases"] / d["seconds"]) / base
    print(f"\n(d)/(a) = {ratio_da:.1f}×   (target ≥ 10×)")
    print(f"(d)/(c) = {ratio_dc:.2f}    (target ≥ 0.85: framework overhead ≤ 15 %)")


if __name__ == "__main__":
    main()
