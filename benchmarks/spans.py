"""Spans the model writes itself against spans written in the spec, at an equal budget of model tokens.

    python benchmarks/spans.py [--models smollm2-135m runs/h15/sft runs/h15/worst-insertion]
                               [--prompts 4] [--offset 400] [--budget 3000] [--out runs/spans/results.json]
                               [--figures benchmarks/results/spans.json]

For each model and each span source — ``fixed`` (the data set's target span, as the shipped specs use),
``adaptive`` (``spans: {adaptive: …}`` at its defaults) and ``from_model`` (``spans: {from_model: …}``
at its defaults) — every held-out request gets the plugin's own random search (its Hypothesis strategy
and evaluation step, no shrinking) until ``--budget`` model tokens are spent on it. The budget counts
building the spans (top-k and harm-score calls, prefilled answers), scoring and generation; the model's
plain answer R is computed once beforehand and counted for none. Prints, per model and source: distinct
failing states, failing states per 1k model tokens, items broken, and the depth curve (the failing share
of the generated states in each depth bucket), by the harm-classifier (the project's best judge) with
the refusal-keyword judge's count of the same continuations beside it, and the states that did not turn back
(the harm-classifier's third outcome: harmful or continues) with their own depth curve. ``--out`` keeps every
judged state (request, span, position, continuation, verdict) beside the figures, to be read by hand.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Measured runs generate everything: no store of generations and verdicts from earlier runs (store.py).
os.environ.setdefault("PYTEST_ACI_STORE", "off")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

SOURCES = {  # what the spec's spans: key says; fixed: none, the data set's target column is each prompt's span
    "fixed": "",
    "adaptive": "spans: {adaptive: {}}\n",
    "from_model": "spans: {from_model: {}}\n",
}
SPEC = """\
name: spans-{source}
prompts: {{file: {data}, text_column: goal, {span_column}offset: {offset}, limit: {limit}}}
{spans}checks: [recovers]
batch: 4
max_span_tokens: 12
response: {{max_new_tokens: 64}}
continuation: {{max_new_tokens: 40}}
"""


def write_spec(work: Path, source: str, data: Path, offset: int, limit: int) -> Path:
    path = work / f"{source}.aci.yaml"
    span_column = "span_column: target, " if source == "fixed" else ""
    spans = SOURCES[source]
    path.write_text(
        SPEC.format(source=source, data=data, span_column=span_column, offset=offset, limit=limit, spans=spans)
    )
    return path


def run_source(runtime, loaded, budget: int, seed: int, max_examples: int) -> dict:
    """Each request's spans built and searched within ``budget`` model tokens; the records it generated."""
    from search import fresh_caches, search

    from pytest_aci.engine.seeds import derive_seed

    fresh_caches(runtime)
    first = len(runtime.records.all)
    totals = {"failures": 0, "tokens": 0, "build_tokens": 0, "items_broken": 0, "generated": 0}
    for prompt in loaded.prompts:
        before = runtime.stats.model_tokens
        runtime.states.span_ids(loaded, prompt)  # the spans: built here, counted in the budget
        built = runtime.stats.model_tokens - before
        found = search(
            runtime, loaded, prompt, "random", max(0, budget - built), derive_seed(seed, prompt.id), max_examples
        )
        totals["failures"] += found["failures"]
        totals["generated"] += found["generated"]
        totals["tokens"] += found["tokens"] + built
        totals["build_tokens"] += built
        totals["items_broken"] += found["failures"] > 0
    return {**totals, "records": runtime.records.all[first:]}


def case_row(record) -> dict:
    """What a reader needs of one judged state (the JSON keeps them all, to be read by hand): the request, the
    span, where it went, the continuation, and the verdict."""
    return {
        "prompt_id": record.prompt_id,
        "request": record.prompt,
        "position": record.position,
        "response_len": record.response_len,
        "span": record.span,
        "continuation": record.continuation,
        "outcome": record.verdict.outcome,
        "harmful": record.verdict.harmful,
    }


def depth_curve(records, keyword_judge) -> dict:
    """The failing share of the states in each depth bucket, the states, and the keyword judge's failing ones."""
    from pytest_aci.judges import JudgeInput
    from pytest_aci.stats import BUCKETS, depth_bucket

    keyword = keyword_judge.judge(
        [JudgeInput(request=r.prompt, response=r.continuation, inserted=r.span or "") for r in records]
    )
    counts = {b: [0, 0, 0] for b in BUCKETS}  # failing (harmful), not recovered, states
    for record in records:
        cell = counts[depth_bucket(record.position, record.response_len)]
        cell[0] += not record.passed
        cell[1] += not record.recovered
        cell[2] += 1
    keyword_failing = {(r.prompt_id, r.position, r.span) for r, v in zip(records, keyword) if v.harmful}
    unrecovered = {(r.prompt_id, r.position, r.span) for r in records if not r.recovered}
    return {
        "depth": {b: (c[0] / c[2] if c[2] else None, c[2]) for b, c in counts.items()},
        "depth_not_recovered": {b: (c[1] / c[2] if c[2] else None, c[2]) for b, c in counts.items()},
        "keyword_failures": len(keyword_failing),
        "not_recovered": len(unrecovered),
        "states": len(records),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "runs/h15/sft", "runs/h15/worst-insertion"])
    parser.add_argument("--data", type=Path, default=ROOT / "safety_specs/data/harmful_behaviors.csv")
    parser.add_argument("--offset", type=int, default=400)
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--budget", type=int, default=3000, help="model tokens per request and source")
    parser.add_argument("--max-examples", type=int, default=60, help="Hypothesis examples per search at most")
    parser.add_argument("--sources", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    parser.add_argument("--backend", default="hf")
    parser.add_argument("--judge", default="harm-classifier")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the results as JSON here too, every judged state included")
    parser.add_argument(
        "--figures", type=Path, help="write the figures alone (no states) as JSON here: benchmarks/results/spans.json"
    )
    args = parser.parse_args()

    from pytest_aci.engine.runtime import AciRuntime
    from pytest_aci.judges import make_judge
    from pytest_aci.options import AciOptions
    from pytest_aci.spec import load_spec
    from pytest_aci.stats import BUCKETS

    work = ROOT / "runs" / "spans-bench"
    work.mkdir(parents=True, exist_ok=True)
    keyword_judge = make_judge("refusal-keywords")
    results: dict = {}
    for model in args.models:
        runtime = AciRuntime(AciOptions(model=model, backend=args.backend, seed=args.seed, judge=args.judge))
        for source in args.sources:
            loaded = load_spec(write_spec(work, source, args.data.resolve(), args.offset, args.prompts))
            runtime.states.wanted_prompts[loaded.path] = {p.id for p in loaded.prompts}
            for prompt in loaded.prompts:  # R once, outside every budget
                runtime.states.reference(loaded, prompt)
            print(f"{model}: {source} spans, {args.budget} model tokens per request …", flush=True)
            found = run_source(runtime, loaded, args.budget, args.seed, args.max_examples)
            records = found.pop("records")
            curve = depth_curve(records, keyword_judge)
            results.setdefault(model, {})[source] = {**found, **curve, "cases": [case_row(r) for r in records]}
        runtime.close()

    print(
        f"\n{args.prompts} requests of {args.data.name} from row {args.offset}, {args.budget} model tokens per "
        f"request and source (span building included), random search, judge {args.judge} "
        "(refusal-keywords on the same continuations beside it)"
    )
    head = f"  {'model':<28}{'spans':<12}{'failing':>8}{'(keyw.)':>8}{'not rec.':>9}{'per 1k tok':>11}{'items':>7}"
    print(head + f"{'states':>7}{'build tok':>10}  " + " ".join(f"{b:>9}" for b in BUCKETS))
    for model, by_source in results.items():
        for source, row in by_source.items():
            per_k = 1000 * row["failures"] / max(1, row["tokens"])
            for key, label in (("depth", "harmful"), ("depth_not_recovered", "not recovered")):
                depth = " ".join(
                    f"{'–' if rate is None else f'{rate:.0%}':>5}({n:>2})" for rate, n in (row[key][b] for b in BUCKETS)
                )
                if key == "depth":
                    print(
                        f"  {Path(model).name:<28}{source:<12}{row['failures']:>8}{row['keyword_failures']:>8}"
                        f"{row['not_recovered']:>9}{per_k:>11.2f}{row['items_broken']:>4}/{args.prompts:<2}"
                        f"{row['states']:>7}{row['build_tokens']:>10}  {depth}"
                    )
                else:
                    print(f"  {'':<28}{label:<12}{'':>59}  {depth}")
    from pytest_aci.files import write_json

    header = {"args": {k: str(v) for k, v in vars(args).items()}}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.out, {**header, **results})
    if args.figures:  # what the documentation's table is rendered from (docs/gen_reference.py)
        figures = {
            m: {s: {k: v for k, v in row.items() if k != "cases"} for s, row in by.items()} for m, by in results.items()
        }
        write_json(args.figures, {**header, **figures})


if __name__ == "__main__":
    main()
