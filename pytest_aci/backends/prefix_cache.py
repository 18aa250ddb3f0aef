"""Next-token log-probs run from the longest prefix whose attention cache is already in memory.

An adaptive span grows one token a step, in a context that shares the conversation and the model's
answer with the scored base: running only what follows the longest cached prefix makes a step cost
the tokens it adds, not the whole context.
"""

from __future__ import annotations

from collections.abc import Iterable


def shared_length(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def next_logprobs(model, context: tuple[int, ...], cached: Iterable[tuple[tuple[int, ...], object]], device: str):
    """(log-probs of the token after ``context``, its attention cache, tokens run), from the ``(ids, attention
    cache)`` pair in ``cached`` that shares the longest prefix with ``context`` (copied, never changed)."""
    import copy

    import torch

    cut, source = 0, None
    for ids, cache in cached:
        shared = shared_length(ids, context)
        if shared > cut:
            cut, source = shared, cache
    cut = min(cut, len(context) - 1)  # at least one token runs: its logits are the answer
    cache = None
    if source is not None and cut > 0:
        cache = copy.deepcopy(source)
        extra = cache.get_seq_length() - cut
        if extra > 0:
            cache.crop(-extra)  # drop what follows the shared prefix
    else:
        cut = 0
    rest = torch.tensor([context[cut:]], device=device)
    positions = torch.arange(cut, len(context), device=device)[None]
    out = model(input_ids=rest, position_ids=positions, past_key_values=cache, use_cache=True)
    return torch.log_softmax(out.logits[0, -1].float(), dim=-1), out.past_key_values, len(context) - cut
