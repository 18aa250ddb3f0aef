"""Generation backends: token ids in, token ids and text out, greedy and deterministic.

``base`` is what they share (the protocol, values, errors, chat-template helpers), ``registry`` which
backends there are and how one is built by name; ``vllm``, ``hf`` and ``openai`` are the backends.
"""

from pytest_aci.backends.base import (
    DEFAULT_API_KEY_ENV,
    Backend,
    BackendError,
    ChatTemplateError,
    Completion,
    LazyBackend,
    ScoreRequest,
    best_first,
    chat_prompt_ids,
    conversation_ids,
    eos_token_ids,
    trim_completion,
    vllm_available,
)
from pytest_aci.backends.registry import BACKENDS, CHOICES, IN_PROCESS, BackendSettings, create_backend, pick_backend

__all__ = [
    "BACKENDS",
    "CHOICES",
    "DEFAULT_API_KEY_ENV",
    "IN_PROCESS",
    "Backend",
    "BackendError",
    "BackendSettings",
    "ChatTemplateError",
    "Completion",
    "LazyBackend",
    "ScoreRequest",
    "best_first",
    "chat_prompt_ids",
    "conversation_ids",
    "create_backend",
    "eos_token_ids",
    "pick_backend",
    "trim_completion",
    "vllm_available",
]
