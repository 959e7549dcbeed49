"""`swift deploy` of the tiny model on localhost: a real OpenAI-compatible server for the tests,
which they can stop (SIGKILL, as a crash) and start again on the same port."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Optional

from tests.conftest import TINY_MAX_PIXELS, swift_bin

SERVED_NAME = "tiny"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SwiftDeploy:
    def __init__(self, model: Path, log_dir: Path, port: Optional[int] = None, max_new_tokens: int = 32):
        self.model, self.log_dir = model, Path(log_dir)
        self.port = port or free_port()
        self.max_new_tokens = max_new_tokens
        self.proc: Optional[subprocess.Popen] = None
        self.starts = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 240) -> float:
        """Start and wait until ``/v1/models`` answers; returns the start-up seconds."""
        self.starts += 1
        env = {**os.environ, "MAX_PIXELS": str(TINY_MAX_PIXELS)}
        log = open(self.log_dir / f"deploy_{self.starts}.log", "w")
        t = time.time()
        self.proc = subprocess.Popen(
            [swift_bin(), "deploy", "--model", str(self.model), "--template", "qwen2_5_vl", "--infer_backend",
             "transformers", "--host", "127.0.0.1", "--port", str(self.port), "--served_model_name", SERVED_NAME,
             "--max_new_tokens", str(self.max_new_tokens)],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log_path = self.log_dir / f"deploy_{self.starts}.log"
        while time.time() - t < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"swift deploy exited with {self.proc.returncode}: " + log_path.read_text()[-3000:])
            # ms-swift moves to the next free port when the asked one cannot be bound yet (a killed
            # server's connections linger in TIME_WAIT for a minute): follow the port it reports
            m = re.search(r"Uvicorn running on http://[\d.]+:(\d+)", log_path.read_text(errors="replace"))
            if m:
                self.port = int(m.group(1))
            try:
                with urllib.request.urlopen(self.base_url + "/models", timeout=2) as r:
                    if r.status == 200:
                        return time.time() - t
            except OSError:
                time.sleep(0.5)
        self.kill()
        raise TimeoutError(f"swift deploy did not answer within {timeout} s")

    def kill(self) -> None:
        """SIGKILL the whole process group (a crash, not a clean shutdown)."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    def __enter__(self) -> "SwiftDeploy":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.kill()
