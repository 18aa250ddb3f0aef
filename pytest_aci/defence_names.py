"""The names of the inference-time defences (``--aci-defence``, a spec's ``defence:``), checked where they are
read: the option checks, the spec schema and the engine (``engine/defences.py``) share this leaf."""

from __future__ import annotations

DEFAULT_INTERVAL = 16  # header re-injection: every 16 generated tokens unless header:N says otherwise


class DefenceError(ValueError):
    """A defence name that cannot be used; the message is the one line the user sees."""


def check_defence(value: str) -> str:
    """``--aci-defence`` and ``defence:``: ``header``, ``header:N`` or ``reset:TOKEN``."""
    kind, _, argument = value.strip().partition(":")
    if kind == "header":
        if argument and (not argument.isdigit() or int(argument) < 1):
            raise DefenceError(f"header:N needs a positive whole number of tokens, got {argument!r}")
        return f"header:{argument or DEFAULT_INTERVAL}"
    if kind == "reset":
        if not argument.strip():
            raise DefenceError("reset:TOKEN needs the model's reset token, e.g. reset:[RESET]")
        return f"reset:{argument.strip()}"
    raise DefenceError(f"expected header, header:N or reset:TOKEN, got {value!r}")
