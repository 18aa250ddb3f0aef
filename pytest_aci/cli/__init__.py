"""The commands: ``aci`` (``aci report``, ``aci judge-eval``, ``aci rejudge``; ``cli/aci.py``) and
``aci-harden`` (``cli/harden.py``; also ``python -m pytest_aci.cli``)."""
