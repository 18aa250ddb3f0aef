"""Hypothesis strategies for insertion states; they shrink to the earliest position and shortest span."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st

from pytest_aci.types import InsertionCase


@st.composite
def insertion_cases(draw: st.DrawFn, response_len: int, span_lengths: Sequence[int], leads: int = 0) -> InsertionCase:
    """One (k, span, length) state: k in [0, |R|], a span from the pool, 1..len(span) of its tokens.

    With ``leads`` > 0 the span may also get one of that many lead fragments in front (shrinking
    towards none), so the search covers composed spans, not only the pool.
    """
    position = draw(st.integers(min_value=0, max_value=response_len))
    span_index = draw(st.integers(min_value=0, max_value=len(span_lengths) - 1))
    span_tokens = draw(st.integers(min_value=1, max_value=max(1, span_lengths[span_index])))
    lead = draw(st.integers(min_value=-1, max_value=leads - 1)) if leads else -1
    return InsertionCase(position=position, span_index=span_index, span_tokens=span_tokens, lead=lead)


def insertion_batches(
    response_len: int, span_lengths: Sequence[int], batch: int, leads: int = 0
) -> st.SearchStrategy[list[InsertionCase]]:
    """A batch of distinct states per Hypothesis example, evaluated in one backend call."""
    return st.lists(
        insertion_cases(response_len, span_lengths, leads), min_size=1, max_size=batch, unique_by=lambda c: c
    )
