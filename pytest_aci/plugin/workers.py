"""pytest-xdist: the session seed for every worker, and a GPU per worker on a multi-GPU host."""

from __future__ import annotations

from pytest_aci.plugin.session import session_options


class XdistHooks:
    """Registered only when pytest-xdist is installed: hand the session seed to every worker."""

    def pytest_configure_node(self, node) -> None:

        node.workerinput["aci_seed"] = session_options(node.config).seed


def _gpu_count() -> int:
    """GPUs on this host, without initialising CUDA in this process (nvidia-smi -L)."""
    import shutil
    import subprocess

    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in listing.splitlines())


def assign_worker_device(worker_id: str) -> None:
    """Under xdist on a multi-GPU host, worker gwN takes GPU N mod count — unless CUDA_VISIBLE_DEVICES is set."""
    import os

    if "CUDA_VISIBLE_DEVICES" in os.environ or not worker_id.startswith("gw"):
        return
    count = _gpu_count()
    if count > 1:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(int(worker_id[2:]) % count)
