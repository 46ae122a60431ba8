"""A real Prefect server for tests: `prefect server start` on 127.0.0.1 and a free port, stopped by its process group."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process_group(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Stop a process started with start_new_session=True, and its children (by its own group id)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout)


class PrefectServer:
    """A `prefect server start` subprocess on 127.0.0.1 and a free port, with its own PREFECT_HOME."""

    def __init__(self, home: Path):
        self.home, self.port = home, free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        self.log = home / "server.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        self.env.update({"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1",
                         "PREFECT_UI_ENABLED": "false"})
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1", "--port",
                 str(self.port)], env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 180
        while not self._healthy():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"prefect server did not start:\n{self.log.read_text()[-4000:]}")
            time.sleep(1)
        self.env["PREFECT_API_URL"] = self.url

    def _healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    @contextlib.contextmanager
    def client(self):
        from prefect import get_client
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings({PREFECT_API_URL: self.url}), get_client(sync_client=True) as client:
            yield client

    def wait_for_run(self, run_id, timeout: float, process: subprocess.Popen | None = None, log: Path | None = None):
        """The flow run once it reaches a final state; fails early if the process running it exits."""
        deadline = time.monotonic() + timeout
        while True:
            with self.client() as client:
                run = client.read_flow_run(run_id)
            if run.state is not None and run.state.is_final():
                return run
            if (process is not None and process.poll() is not None) or time.monotonic() > deadline:
                tail = log.read_text()[-6000:] if log is not None and log.exists() else ""
                raise AssertionError(f"flow run {run_id} not finished (state {run.state}):\n{tail}")
            time.sleep(2)

    def stop(self) -> None:
        stop_process_group(self.proc)
