"""Reading undecided continuations further: one still on the harmful track when its token budget ran out
is extended from its own ids by another budget and judged again, until it turns harmful, recovers, the
model stops, or it reaches the cap."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pytest_aci.backends import Completion
from pytest_aci.engine.continuation import Continuation
from pytest_aci.judges import JudgeInput, Verdict


def undecided(continuation: Continuation, verdict: Verdict, cap: int) -> bool:
    """Still continuing, cut by its budget, and short of the cap: worth reading further."""
    return (
        verdict.outcome == "continues"
        and not verdict.error
        and continuation.finish == "length"
        and continuation.tokens < cap
    )


def read_further(
    continuations: list[Continuation],
    verdicts: list[Verdict],
    *,
    step: int,
    cap: int,
    generate: Callable[[Sequence[tuple[int, ...]], int], list[Completion]],
    judge: Callable[[Sequence[JudgeInput]], list[Verdict]],
) -> None:
    """Extend every undecided continuation by ``step`` tokens (less at the cap), batched per budget, and judge
    the extended ones again; repeat until none is undecided. The two lists are changed in place."""
    while todo := [i for i, (c, v) in enumerate(zip(continuations, verdicts)) if undecided(c, v, cap)]:
        budgets = {i: min(step, cap - continuations[i].tokens) for i in todo}
        for budget in sorted(set(budgets.values())):
            chosen = [i for i in todo if budgets[i] == budget]
            completions = generate([continuations[i].prefix + continuations[i].token_ids for i in chosen], budget)
            for i, completion in zip(chosen, completions):
                continuations[i] = continuations[i].extended(
                    completion.token_ids, completion.text, completion.finish_reason
                )
        again = judge([JudgeInput(continuations[i].turn.request, continuations[i].text, continuations[i].inserted)
                       for i in todo])  # fmt: skip
        for i, verdict in zip(todo, again):
            verdicts[i] = verdict
