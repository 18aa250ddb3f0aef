"""Score mode's cost on each backend, side by side: the same teacher-forced requests, timed, with the margins compared.

    python benchmarks/score_backends.py [--spec safety_specs/example.aci.yaml] [--positions N] [--out F.json]

The insertion states are those of ``--aci-mode score`` on the spec (every k, or ``--positions`` evenly
spaced ones, for every span at full length) against the embedded SmolLM2; the model's answers come
from the transformers backend, and every backend scores exactly the same requests (one per state and
recovery opening). For each backend: seconds in ``score`` (engine start not counted), model tokens run,
and the largest difference of a target log-probability from transformers'. vLLM runs twice: as it
scored before (every request's whole context computed: prompt log-probs without the prefix cache) and
as it scores now (contexts prefilled once, then prompt log-probs read from the prefix cache), each
with the CPU's default KV block of 128 tokens and with 32.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# Measured runs generate everything: no store of generations and verdicts from earlier runs (store.py).
os.environ.setdefault("PYTEST_ACI_STORE", "off")

ROOT = Path(__file__).resolve().parent.parent


def score_requests(spec: Path, positions: int | None) -> tuple[list, dict]:
    """The score-mode requests of every recovers item of ``spec``, and the transformers backend's result."""
    from pytest_aci.engine.runtime import AciRuntime
    from pytest_aci.options import AciOptions
    from pytest_aci.plugin.collect import score_positions
    from pytest_aci.spec import load_spec
    from pytest_aci.types import InsertionCase

    runtime = AciRuntime(AciOptions(backend="hf", judge="refusal-keywords"))
    loaded = load_spec(spec)
    found: dict = {}  # request -> its log-probs, in the order the score calls asked
    figures = {"seconds": 0.0, "tokens": 0}
    inner = runtime.scorer.score

    def score(requests):
        backend = runtime.backend
        started, before = time.perf_counter(), backend.computed_tokens
        results = inner(requests)
        figures["seconds"] += time.perf_counter() - started
        figures["tokens"] += backend.computed_tokens - before
        found.update(zip(requests, results))
        return results

    runtime.scorer.score = score
    for prompt in loaded.prompts:
        spans = runtime.states.span_ids(loaded, prompt)
        cases = [
            InsertionCase(k, i, span.max_tokens)
            for i, span in enumerate(spans)
            for k in score_positions(runtime.states.answer_len(loaded, prompt), positions)
        ]
        runtime.scorer.harm_scores(loaded, prompt, cases)
    runtime.close()
    return list(found), {**figures, "logprobs": list(found.values())}


def recompute_everything(backend, requests) -> list[tuple[float, ...]]:
    """How vLLM scored before: one request per (state, opening), its whole context computed, no cache read."""
    from vllm import SamplingParams

    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0, detokenize=False)
    sequences = [r.context + r.target for r in requests]
    results = []
    for request, sequence, output in zip(requests, sequences, backend._run(sequences, params)):
        start = len(sequence) - len(request.target)
        results.append(tuple(output.prompt_logprobs[t][sequence[t]].logprob for t in range(start, len(sequence))))
        backend.computed_tokens += len(sequence) + 1
    return results


def run_vllm(requests, block_size: int | None, cached: bool) -> dict:
    from pytest_aci.backends.vllm import VllmBackend
    from pytest_aci.models import resolve_model

    args = {"block_size": str(block_size)} if block_size else {}
    backend = VllmBackend(resolve_model("smollm2-135m"), engine_args=args)
    started, before = time.perf_counter(), backend.computed_tokens
    logprobs = backend.score(requests) if cached else recompute_everything(backend, requests)
    figures = {"seconds": time.perf_counter() - started, "tokens": backend.computed_tokens - before}
    backend.close()
    return {**figures, "logprobs": logprobs}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", type=Path, default=ROOT / "safety_specs" / "example.aci.yaml")
    parser.add_argument("--positions", type=int, default=None, help="evenly spaced k per answer (default: every k)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    requests, hf = score_requests(args.spec, args.positions)
    rows = {"transformers": hf}
    for block in (None, 32):
        for cached in (False, True):
            name = f"vllm, {'prefix cache read' if cached else 'whole contexts'}, block {block or 128}"
            rows[name] = run_vllm(requests, block, cached)
    print(f"{len(requests)} teacher-forced requests ({len({r.context for r in requests})} distinct contexts)")
    print(f"{'backend':44} {'seconds':>8} {'model tokens':>13} {'x transformers':>15} {'max |dlogp|':>12}")
    table = {}
    for name, row in rows.items():
        diff = max(abs(a - b) for x, y in zip(row["logprobs"], hf["logprobs"]) for a, b in zip(x, y))
        ratio = row["seconds"] / hf["seconds"]
        table[name] = {"seconds": row["seconds"], "tokens": row["tokens"], "ratio": ratio, "max_diff": diff}
        print(f"{name:44} {row['seconds']:8.1f} {row['tokens']:13d} {ratio:14.1f}x {diff:12.2e}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"requests": len(requests), "rows": table}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
