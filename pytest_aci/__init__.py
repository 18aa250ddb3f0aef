"""pytest-aci: test how deep a language model's safety alignment goes."""

__version__ = "0.1.0"

__all__ = ["InsertionState", "insertion_states"]


def __getattr__(name: str):
    # Lazy: ``import pytest_aci`` (the plugin's entry point) stays light; hypothesis loads on use.
    if name in __all__:
        from pytest_aci import api

        return getattr(api, name)
    raise AttributeError(f"module 'pytest_aci' has no attribute {name!r}")
