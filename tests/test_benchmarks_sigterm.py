"""A benchmark stopped with SIGTERM (``kill``, a CI timeout) stops the servers it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks._common import REPO, subprocess_env

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

# A benchmark script's shape: a simulator in a child process, its pid printed once it serves,
# then work until stopped (here, a read that only the test's signal ends).
SCRIPT = """
import sys
from benchmarks._common import children_stopped_on_sigterm, simulator_process

def main():
    with simulator_process(10) as sim:
        print(sim.pid, flush=True)
        sys.stdin.read()
    return 0

with children_stopped_on_sigterm():
    sys.exit(main())
"""


def _running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie, waiting to be reaped, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_a_benchmark_stopped_with_sigterm_stops_its_simulator() -> None:
    script = subprocess.Popen(
        [sys.executable, "-c", SCRIPT],
        cwd=REPO,
        env=subprocess_env(),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    simulator = 0
    try:
        assert script.stdout is not None
        simulator = int(script.stdout.readline())
        assert _running(simulator)
        script.send_signal(signal.SIGTERM)
        # 128 + SIGTERM: the script unwound (its `with` blocks ran) rather than died on the spot
        assert script.wait(timeout=60) == 128 + signal.SIGTERM
        assert not _running(simulator)
    finally:
        if script.poll() is None:
            script.kill()
            script.wait(timeout=10)
        if simulator and _running(simulator):
            os.kill(simulator, signal.SIGKILL)  # what the test failed on: not left behind
        for pipe in (script.stdin, script.stdout):
            if pipe is not None:
                pipe.close()
