"""Run ``swift deploy`` in the background for a pipeline stage that needs an OpenAI-compatible server
(synthesis against a local model, the CVO filter's sampling from the MRSI checkpoint).

``mcr-swift serve start --log LOG --pid-file PID -- <swift deploy args>`` / ``mcr-swift serve stop --pid-file PID``;
see docs/pipeline.md (run report and background server).
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Dict, List, Optional

from ..jsonl import write_text_atomic
from ..core.argtypes import positive_float

#: Environment variables that set the image resolution (`mcr_swift.core.coords.CoordinateSpace.from_env`).
RESIZE_VARS = ("MCR_MODEL_FAMILY", "MAX_PIXELS", "MIN_PIXELS", "IMAGE_MAX_TOKEN_NUM", "IMAGE_MIN_TOKEN_NUM",
               "MCR_TEMPLATE_MAX_PIXELS")
_PORT_LINE = re.compile(r"Uvicorn running on http://[\d.]+:(\d+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(deploy_args: List[str], log: Path, pid_file: Path, timeout: float = 900.0,
          swift: str = "swift", env: Optional[Dict[str, str]] = None, cwd: Optional[Path] = None) -> str:
    """Start ``swift deploy`` (``swift``: the command, split like a shell word list) in the environment
    ``env`` (default: this process's) and return its base URL once it answers. Raises RuntimeError with
    the log's tail if it exits or does not answer within ``timeout`` seconds."""
    env = dict(os.environ if env is None else env)
    port = free_port()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as f:
        # the resize settings the server's image processor reads (README "One resolution everywhere")
        f.write("[mcr_swift.pipeline.serve] " + " ".join(f"{k}={env[k]}" for k in RESIZE_VARS if env.get(k))
                + "\n")
        f.flush()
        proc = subprocess.Popen([*shlex.split(swift), "deploy", *deploy_args, "--host", "127.0.0.1", "--port",
                                 str(port)], stdout=f, stderr=subprocess.STDOUT, start_new_session=True, env=env,
                                cwd=cwd)
    write_text_atomic(pid_file, str(proc.pid))
    t = time.time()
    while time.time() - t < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"swift deploy exited with code {proc.returncode}; log {log}:\n"
                               + log.read_text(errors="replace")[-3000:])
        m = _PORT_LINE.search(log.read_text(errors="replace"))
        if m:
            port = int(m.group(1))
        url = f"http://127.0.0.1:{port}/v1"
        try:
            with urllib.request.urlopen(url + "/models", timeout=2) as r:
                if r.status == 200:
                    return url
        except OSError:
            time.sleep(1.0)
    stop(pid_file)
    raise RuntimeError(f"swift deploy did not answer within {timeout:.0f} s; log {log}")


def stop(pid_file: Path) -> bool:
    """Stop the server started by `start` (SIGTERM, then SIGKILL after 20 s). False if none ran."""
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
        for _ in range(40):
            time.sleep(0.5)
            os.killpg(pid, 0)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pid_file.unlink(missing_ok=True)
    return True


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="mcr-swift serve", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start")
    s.add_argument("--log", required=True)
    s.add_argument("--pid-file", required=True)
    s.add_argument("--timeout", type=positive_float, default=900.0)
    s.add_argument("--swift", default=None, help="the swift command (default $SWIFT, else the one beside this Python)")
    s.add_argument("deploy_args", nargs=argparse.REMAINDER)
    t = sub.add_parser("stop")
    t.add_argument("--pid-file", required=True)
    a = p.parse_args(argv)
    if a.cmd == "stop":
        stop(Path(a.pid_file))
        return 0
    args = a.deploy_args[1:] if a.deploy_args[:1] == ["--"] else a.deploy_args
    try:
        from .commands import swift_exe
        print(start(args, Path(a.log), Path(a.pid_file), a.timeout, a.swift or shlex.join(swift_exe())))
    except RuntimeError as e:
        print(f"mcr-swift serve: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
