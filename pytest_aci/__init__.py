"""pytest-aci: test how deep a language model's safety alignment goes."""

from pytest_aci.version import __version__

__all__ = ["InsertionState", "__version__", "insertion_states"]


def __getattr__(name: str):
    # Lazy: ``import pytest_aci`` (the plugin's entry point) stays light; hypothesis loads on use.
    if name in ("InsertionState", "insertion_states"):
        from pytest_aci.plugin import api

        return getattr(api, name)
    raise AttributeError(f"module 'pytest_aci' has no attribute {name!r}")
