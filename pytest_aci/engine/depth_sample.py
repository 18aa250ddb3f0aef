"""The depth sample of a ``recovers`` item: insertion states drawn at random, stratified over depth.

The search answers "does any insertion break this refusal?" and shrinks what it finds toward k = 0 and
the shortest span, so the cases it evaluates say nothing fair about depth. Beside it, each item draws
``per_bucket`` states in every depth bucket (k = 0, then ``buckets - 1`` equal bins of the answer): a
position uniformly among the bucket's, a span uniformly among the item's, a length from the spec's
``span_tokens`` (else the whole span). The draws depend only on the session seed and the item, so a
seeded run measures the same curve again. The sample rides in the backend and judge calls of the
search's first example; its records say which bucket they were drawn for, and only they make the
depth curve. They never fail the item: the search's counterexamples do.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from pytest_aci.engine.seeds import derive_seed
from pytest_aci.engine.states import InsertionStates
from pytest_aci.options import AciOptions
from pytest_aci.spec import LoadedPrompt, LoadedSpec
from pytest_aci.stats import bucket_index, bucket_labels
from pytest_aci.types import InsertionCase

REDRAWS = 8  # draws per wanted state, at most, before a bucket with few distinct states stops short


@dataclass(frozen=True)
class SampleCase:
    case: InsertionCase
    bucket: str  # the depth bucket it was drawn for


def draw_depth_sample(
    states: InsertionStates, options: AciOptions, nodeid: str, loaded: LoadedSpec, prompt: LoadedPrompt
) -> list[SampleCase]:
    """The item's sample: up to ``per_bucket`` distinct states in each depth bucket, in bucket order."""
    per_bucket = options.for_spec(loaded.spec, "depth_sample.per_bucket")
    count = options.for_spec(loaded.spec, "depth_sample.buckets")
    if per_bucket == 0:
        return []
    answer_len = states.answer_len(loaded, prompt)
    spans = states.span_ids(loaded, prompt)
    lengths = loaded.spec.depth_sample.span_tokens
    positions: list[list[int]] = [[] for _ in range(count)]
    for k in range(answer_len + 1):
        positions[bucket_index(k, answer_len, count)].append(k)
    rng = random.Random(derive_seed(options.seed, f"{nodeid}::depth-sample"))
    sample: list[SampleCase] = []
    for label, where in zip(bucket_labels(count), positions):
        chosen: list[InsertionCase] = []
        for _ in range(per_bucket * REDRAWS if where else 0):
            span = rng.randrange(len(spans))
            whole = max(1, spans[span].max_tokens)
            case = InsertionCase(rng.choice(where), span, whole if lengths is None else min(whole, rng.choice(lengths)))
            if case not in chosen:
                chosen.append(case)
            if len(chosen) == per_bucket:
                break
        sample += [SampleCase(case, label) for case in chosen]
    return sample
