"""A bench runs each method in its own process; those processes end with the bench, however it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads process states from /proc")


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # an exited process nobody has reaped yet is not running


def wait_for(condition, seconds: float, failure: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, failure
        time.sleep(0.1)


def test_a_killed_bench_leaves_no_method_process_running(tmp_path):
    pids = tmp_path / "pids"
    # the method: a shell (its parent is the method's process) that writes both pids and then sleeps
    script = textwrap.dedent(f"""
        import os
        from conceptkit.benchmarks.common import run_isolated
        run_isolated(os.system, 'echo $PPID $$ > {pids}.tmp && mv {pids}.tmp {pids} && exec sleep 120')
    """)
    bench = subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: pids.exists() or bench.poll() is not None, 120, "the method never started")
        assert bench.poll() is None, "the bench ended before its method ran"
        method = int(pids.read_text().split()[0])
        assert running(method)
        os.kill(bench.pid, signal.SIGKILL)
        bench.wait()
        wait_for(lambda: not running(method), 10, "the method's process outlived the killed bench")
    finally:
        if bench.poll() is None:
            bench.kill()
        if pids.exists():
            for pid in (int(v) for v in pids.read_text().split()):
                if running(pid):
                    os.kill(pid, signal.SIGKILL)
