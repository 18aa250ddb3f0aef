"""Teacher-forced scoring of many continuations of one cached base in one forward pass.

Requests that share (base, cut) are packed into one row as a prefix tree of their
``suffix + target`` sequences, under a tree attention mask: a token sees the cached ``base[:cut]``
and its own ancestors in the tree, nothing else. So spans cut from one span share their tokens, and
targets that open alike (", I can't" and ", I'm sorry") share their opening. This is the computation
of a forward pass over ``base[:cut] + suffix + target`` per request, without recomputing what they
share.
"""

from __future__ import annotations


def score_packed(model, rows, width: int, base_cache, base_logprobs, pad_id: int, device: str):
    """One batch of packed rows ``(cut, [(request index, request), …])`` over a cached base of ``width``
    tokens: the target log-probs of each request by index, and how many tokens were fed."""
    import copy

    import torch

    layouts = []  # per row: token ids, slot of each fed prefix, ancestors per slot, position ids
    for cut, members in rows:
        ids: list[int] = []
        positions: list[int] = []
        slot_of: dict[tuple[int, ...], int] = {}
        ancestors: list[list[int]] = []
        for _, request in members:
            sequence = request.suffix + request.target
            # The last token predicts nothing we read: only the proper prefixes are fed.
            for end in range(1, len(sequence)):
                prefix = sequence[:end]
                if prefix not in slot_of:
                    slot_of[prefix] = len(ids)
                    ancestors.append((ancestors[slot_of[prefix[:-1]]] if end > 1 else []) + [len(ids)])
                    ids.append(prefix[-1])
                    positions.append(cut + end - 1)
        layouts.append((ids, slot_of, ancestors, positions))
    length = max(1, max(len(ids) for ids, _, _, _ in layouts))
    batch = len(rows)
    input_ids = torch.full((batch, length), pad_id, dtype=torch.long)
    position_ids = torch.zeros((batch, length), dtype=torch.long)
    mask = torch.zeros((batch, 1, length, width + length), dtype=torch.bool)
    for b, ((cut, _), (ids, _, ancestors, positions)) in enumerate(zip(rows, layouts)):
        n = len(ids)
        mask[b, 0, :, :cut] = True  # every slot (padding too: no empty softmax) sees base[:cut]
        if n:
            input_ids[b, :n] = torch.tensor(ids, dtype=torch.long)
            position_ids[b, :n] = torch.tensor(positions, dtype=torch.long)
            for slot, seen in enumerate(ancestors):
                mask[b, 0, slot, [width + j for j in seen]] = True
    if model.config._attn_implementation == "eager":
        attention = torch.zeros(mask.shape).masked_fill(~mask, torch.finfo(torch.float32).min)
    else:
        attention = mask
    cache = copy.deepcopy(base_cache)
    cache.batch_repeat_interleave(batch)
    logits = model(
        input_ids=input_ids.to(device),
        attention_mask=attention.to(device),
        position_ids=position_ids.to(device),
        past_key_values=cache,
        use_cache=True,
    ).logits
    results: dict[int, tuple[float, ...]] = {}
    for b, ((cut, members), (ids, slot_of, _, _)) in enumerate(zip(rows, layouts)):
        row = torch.log_softmax(logits[b, : len(ids)].float(), dim=-1)  # once per slot, shared by requests
        for index, request in members:
            sequence, start = request.suffix + request.target, len(request.suffix)
            # Token j is predicted at the slot of sequence[:j]; the first one at the base's last position.
            slots = [slot_of[sequence[:j]] for j in range(max(1, start), len(sequence))]
            values = row[slots, list(sequence[len(sequence) - len(slots) :])].tolist()  # one gather, one copy
            if start == 0:
                values.insert(0, float(base_logprobs[cut - 1][sequence[0]]))
            results[index] = tuple(values)
    return results, sum(len(ids) for ids, _, _, _ in layouts)
