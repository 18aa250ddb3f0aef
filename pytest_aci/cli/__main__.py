"""``python -m pytest_aci.cli …`` is ``aci-harden …`` (what ``accelerate launch -m`` needs)."""

import sys

from pytest_aci.cli.harden import harden_main

sys.exit(harden_main())
