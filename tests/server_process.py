"""A real ``python -m oxillama_py serve`` process on 127.0.0.1, for the server tests.

Not a test module. The process is started with a free port, waited for until
``/health`` answers 200 (or it dies, and its log is shown), and stopped with
SIGTERM (graceful shutdown) at the end; a process that does not stop in time
fails the test that started it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

SERVER_BACKENDS = ("asyncio", "uvloop", "trio")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path
    backend: str

    @property
    def api_url(self) -> str:
        return self.base_url + "/v1"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def health(self) -> dict[str, object]:
        response = httpx.get(self.base_url + "/health", timeout=10)
        body: dict[str, object] = response.json()
        return body

    def wait_idle(self, timeout: float = 30.0) -> dict[str, object]:
        """Wait until no slot is busy and nothing is admitted; return the last health."""
        deadline = time.monotonic() + timeout
        while True:
            health = self.health()
            if health["slots_busy"] == 0 and health["admitted"] == 0 and health["queue"] == 0:
                return health
            if time.monotonic() > deadline:
                raise AssertionError(f"server still busy after {timeout} s: {health}")
            time.sleep(0.05)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM, then wait; the exit code (fails if it does not exit in time)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"server did not stop within {timeout} s after SIGTERM:\n{self.log()}") from None


def serve_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m oxillama_py serve ARGS`` run to its end (for arguments it refuses before serving)."""
    argv = [sys.executable, "-m", "oxillama_py", "serve", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def model_flags(models: dict[str, Path], loras: dict[str, Path] | None = None) -> list[str]:
    """``--model NAME=PATH`` for each model and ``--lora NAME=PATH`` for each adapter (over the first model)."""
    flags = [flag for name, path in models.items() for flag in ("--model", f"{name}={path}")]
    return flags + [flag for name, path in (loras or {}).items() for flag in ("--lora", f"{name}={path}")]


def model_copies(model_path: Path, folder: Path, *names: str) -> dict[str, Path]:
    """``names`` as files of the same model in ``folder`` (hard links where the file system allows)."""
    copies = {}
    for name in names:
        target = folder / f"{name}.gguf"
        try:
            os.link(model_path, target)
        except OSError:
            shutil.copyfile(model_path, target)
        copies[name] = target
    return copies


@contextmanager
def running_server(
    *args: str, backend: str = "asyncio", env: dict[str, str] | None = None, startup: float = 180.0
) -> Iterator[ServerProcess]:
    """Start a server process with ``args`` after ``serve``; yield it once healthy; stop it."""
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="oxillama-server-", suffix=".log")[1])
    command: Sequence[str] = [
        sys.executable,
        "-m",
        "oxillama_py",
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--backend",
        backend,
        *args,
    ]
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    server = ServerProcess(process, f"http://127.0.0.1:{port}", log, backend)
    try:
        deadline = time.monotonic() + startup
        while True:
            if process.poll() is not None:
                raise AssertionError(f"server exited with {process.returncode} at startup:\n{server.log()}")
            try:
                if httpx.get(server.base_url + "/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"server not healthy after {startup} s:\n{server.log()}")
            time.sleep(0.1)
        yield server
    finally:
        try:
            server.stop()
        finally:
            log.unlink(missing_ok=True)
