"""pytest-xdist: the session seed for every worker, a GPU per worker on a multi-GPU host, and a share of the cores."""

from __future__ import annotations

import os
import shutil
import subprocess

from pytest_aci.plugin.session import session_options


class XdistHooks:
    """Registered only when pytest-xdist is installed: hand the session seed to every worker."""

    def pytest_configure_node(self, node) -> None:

        node.workerinput["aci_seed"] = session_options(node.config).seed


def _gpu_count() -> int:
    """GPUs on this host, without initialising CUDA in this process (nvidia-smi -L)."""
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in listing.splitlines())


def share_worker_cores(worker_count: int) -> None:
    """Under xdist, N workers share the host's cores: each worker's torch (and in-process vLLM) uses
    ``cores // N`` threads, at least one — unless OMP_NUM_THREADS is set.

    Each engine otherwise sizes its OpenMP pool to every core, and N such pools spin against each other on the
    same cores. Measured here (``benchmarks/worker_threads.py``, two cores, two SmolLM2 vLLM engines generating
    at once): 8.2 s with one thread each, 35.5 s with two each. The variable reaches the processes the worker
    starts, and this worker's torch is told directly.
    """
    if "OMP_NUM_THREADS" in os.environ or worker_count < 2:
        return
    threads = max(1, len(os.sched_getaffinity(0)) // worker_count)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch  # after the variable; and told directly, in case an OpenMP runtime was loaded before it

    torch.set_num_threads(threads)


def assign_worker_device(worker_id: str) -> None:
    """Under xdist on a multi-GPU host, worker gwN takes GPU N mod count — unless CUDA_VISIBLE_DEVICES is set."""
    if "CUDA_VISIBLE_DEVICES" in os.environ or not worker_id.startswith("gw"):
        return
    count = _gpu_count()
    if count > 1:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(int(worker_id[2:]) % count)
