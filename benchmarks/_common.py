"""What every benchmark script shares: the machine line, alternating rounds, the ratio table.

Machine noise is real, so contenders never run in blocks: round after round each runs once,
the order reversed every other round so none always follows the same one. A contender is
reported as the median and the min-max of its rounds, and its ratio to the reference as the
median, over rounds, of its time over the reference's time in the same round (a noisy round
slows both, and the ratio of that round stays honest).
"""

from __future__ import annotations

import contextlib
import os
import platform
import queue
import statistics
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path

__all__ = [
    "LIBRARIES",
    "SimulatorProcess",
    "alternate",
    "alternate_async",
    "machine_info",
    "ratio_table",
    "ratios",
    "simulator_process",
    "subprocess_env",
    "version",
]

#: The repository root: on the ``PYTHONPATH`` of every child process, installed or not.
REPO = Path(__file__).resolve().parent.parent

#: The libraries whose versions decide the figures: printed with every result.
LIBRARIES = ("aiohttp", "attrs", "cattrs", "orjson", "pydantic", "msgspec", "httpx")


def version(dist: str) -> str:
    """The installed version of a distribution, or "-"."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def machine_info(libraries: Iterable[str] = LIBRARIES) -> str:
    """One line on the machine: platform, CPU, cores, Python and the library versions."""
    libs = ", ".join(f"{d} {version(d)}" for d in libraries)
    return (
        f"{platform.platform()} | {platform.processor() or platform.machine()} | "
        f"{os.cpu_count()} cores | Python {platform.python_version()} | {libs}"
    )


def _order(labels: Sequence[str], round_number: int) -> list[str]:
    """The running order of a round: reversed every other round."""
    return list(reversed(labels)) if round_number % 2 else list(labels)


def alternate(contenders: Mapping[str, Callable[[], float]], rounds: int) -> dict[str, list[float]]:
    """Run each contender once a round, alternating, ``rounds`` times; what each one returned.

    A contender times itself and returns seconds (so it can leave its set-up out).
    """
    times: dict[str, list[float]] = {label: [] for label in contenders}
    for r in range(rounds):
        for label in _order(list(contenders), r):
            times[label].append(contenders[label]())
    return times


async def alternate_async(
    contenders: Mapping[str, Callable[[], Awaitable[float]]], rounds: int
) -> dict[str, list[float]]:
    """:func:`alternate` for coroutines, all on the running event loop."""
    times: dict[str, list[float]] = {label: [] for label in contenders}
    for r in range(rounds):
        for label in _order(list(contenders), r):
            times[label].append(await contenders[label]())
    return times


def ratios(samples: Sequence[float], reference: Sequence[float]) -> list[float]:
    """Round by round, a contender's figure over the reference's."""
    return [t / ref for t, ref in zip(samples, reference, strict=True)]


def ratio_table(
    times: Mapping[str, Sequence[float]],
    *,
    reference: str,
    ratio_header: str,
    unit: str = "ms",
    scale: float = 1e3,
    width: int = 42,
) -> str:
    """The table: contender, median, min-max and the median round ratio to ``reference``.

    ``scale`` turns the raw figures (seconds, usually) into ``unit``.
    """
    ref = times[reference]
    lines = [
        f"{'contender':<{width}} {f'median {unit}':>11} {'min-max':>15} {ratio_header:>10}",
    ]
    for label, samples in times.items():
        med = statistics.median(samples) * scale
        span = f"{min(samples) * scale:.2f}-{max(samples) * scale:.2f}"
        ratio = statistics.median(ratios(samples, ref))
        lines.append(f"{label:<{width}} {med:11.2f} {span:>15} {ratio:9.2f}x")
    return "\n".join(lines)


# -- the simulator in a process of its own ------------------------------------------------------


def subprocess_env() -> dict[str, str]:
    """The environment of a child process: this repository importable, no ``DMHUB_`` settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMHUB_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


class SimulatorProcess:
    """Where a simulator serving in a child process listens, and with what credentials."""

    def __init__(self, url: str, app_id: str, secret: str, seeded: str, pid: int) -> None:
        self.url = url
        self.app_id = app_id
        self.secret = secret
        #: How long it took to seed, as it printed it ("0.12 s").
        self.seeded = seeded
        self.pid = pid


@contextlib.contextmanager
def simulator_process(
    customers: int, *, latency_ms: float = 0.0, seed: int = 0, timeout: float = 120.0
) -> Iterator[SimulatorProcess]:
    """``dmhub-async simulate --port 0`` in a child process, until the block ends.

    The simulator then has a core of its own: in-process, its handlers (routing, the store,
    serialising rows) would run on the client's event loop, and every figure would include
    the server's CPU. It prints its URL (the port the OS chose) and credentials, then serves;
    what it prints later is drained and dropped, so that a full pipe never stalls it.
    """
    command = [
        sys.executable,
        "-m",
        "dmhub_async.cli",
        "simulate",
        "--port",
        "0",
        "--customers",
        str(customers),
        "--latency-ms",
        f"{latency_ms:g}",
        "--seed",
        str(seed),
    ]
    proc = subprocess.Popen(
        command,
        env=subprocess_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    started = threading.Event()

    def drain() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            if not started.is_set():
                lines.put(line)
        lines.put(None)  # the output closed: the process is gone

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        found: dict[str, str] = {}
        seen: list[str] = []
        while True:
            try:
                line = lines.get(timeout=timeout)
            except queue.Empty:
                raise RuntimeError(f"the simulator did not start in {timeout:g} s") from None
            if line is None:
                status = proc.wait()
                raise RuntimeError(
                    f"the simulator exited (status {status}) before serving:\n" + "".join(seen)
                )
            seen.append(line)
            key, _, value = line.strip().partition("=")
            if key.startswith("DMHUB_"):
                found[key] = value
            elif "seeded in" in line:
                found["seeded"] = line.split("seeded in")[1].split("(")[0].strip()
            elif line.startswith("Press Ctrl+C"):
                break
        started.set()
        yield SimulatorProcess(
            found["DMHUB_BASE_URL"],
            found["DMHUB_APP_ID"],
            found["DMHUB_SECRET"],
            found.get("seeded", ""),
            proc.pid,
        )
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        reader.join(timeout=5)  # the output closed with the process
        if proc.stdout is not None:
            with contextlib.suppress(OSError, ValueError):
                proc.stdout.close()
