"""pytest-aci: test how deep a language model's safety alignment goes."""

__version__ = "0.1.0"
