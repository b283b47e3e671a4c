"""What every benchmark script shares: the machine line, alternating rounds, the ratio table.

Machine noise is real, so contenders never run in blocks: round after round each runs once,
the order reversed every other round so none always follows the same one. A contender is
reported as the median and the min-max of its rounds, and its ratio to the reference as the
median, over rounds, of its time over the reference's time in the same round (a noisy round
slows both, and the ratio of that round stays honest).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import queue
import re
import signal
import statistics
import subprocess
import sys
import sysconfig
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "LIBRARIES",
    "SimulatorProcess",
    "alternate",
    "alternate_async",
    "children_stopped_on_sigterm",
    "interpreter",
    "machine_info",
    "noise",
    "ratio_table",
    "ratios",
    "record",
    "record_rows",
    "record_times",
    "simulator_process",
    "subprocess_env",
    "version",
    "write_results",
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


def interpreter() -> str:
    """The Python that runs: its version, where it lives and whether it was configured for
    profile-guided and link-time optimization.

    The build moves the SDK's ratios, not only its times: the SDK's own work is Python and
    the floors' is mostly C (orjson, aiohttp's parser): on this machine a pure-Python loop took
    0.76x-0.77x the time on Debian's python3.11 (optimized by its packaging, whatever its
    configure flags say) that it took on pyenv's 3.11.7, and 1.33x-1.35x on pyenv's 3.13.0
    (``bench_interpreters``; benchmarks/HISTORY.md, issue 15's twenty-eighth round).
    """
    config = sysconfig.get_config_var("CONFIG_ARGS") or ""
    flags = [flag for flag in ("--enable-optimizations", "--with-lto") if flag in config]
    build = (
        f"configured with {' '.join(flags)}"
        if flags
        else "configured without --enable-optimizations"
    )
    return f"Python {platform.python_version()} at {sys.base_prefix} ({build})"


def machine_info(libraries: Iterable[str] = LIBRARIES) -> str:
    """One line on the machine: platform, CPU, cores, the Python build, the library versions."""
    libs = ", ".join(f"{d} {version(d)}" for d in libraries)
    return (
        f"{platform.platform()} | {platform.processor() or platform.machine()} | "
        f"{os.cpu_count()} cores | {interpreter()} | {libs}"
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


def noise(samples: Sequence[float]) -> float:
    """Half the min-max spread over the median: 0.05 reads "±5%" (what one round may be off)."""
    return (max(samples) - min(samples)) / 2 / statistics.median(samples)


def ratio_table(
    times: Mapping[str, Sequence[float]],
    *,
    references: Mapping[str, str],
    unit: str = "ms",
    scale: float = 1e3,
) -> str:
    """The table: contender, median, noise, min-max and the median round ratio to each reference.

    ``references`` maps a column's header to the label of the contender it divides by (every
    floor gets its column: never the kinder one alone); ``scale`` turns the raw figures
    (seconds, usually) into ``unit``.
    """
    width = max(len("contender"), *map(len, times))
    cols = [max(len(header), 9) for header in references]
    lines = [
        f"{'contender':<{width}} {f'median {unit}':>11} {'noise':>6} {'min-max':>15}"
        + "".join(f" {header:>{col}}" for header, col in zip(references, cols, strict=True)),
    ]
    for label, samples in times.items():
        med = statistics.median(samples) * scale
        span = f"{min(samples) * scale:.2f}-{max(samples) * scale:.2f}"
        spread = f"±{noise(samples):.0%}"
        cells = "".join(
            f" {statistics.median(ratios(samples, times[ref])):{col - 1}.2f}x"
            for ref, col in zip(references.values(), cols, strict=True)
        )
        lines.append(f"{label:<{width}} {med:11.2f} {spread:>6} {span:>15}{cells}")
    return "\n".join(lines)


# -- what a script hands the runner: its figures, as JSON ----------------------------------------

#: Every figure :func:`record` kept in this process, in order.
RESULTS: list[dict[str, Any]] = []


def record(
    question: str,
    scenario: str,
    contender: str,
    samples: Sequence[float],
    *,
    floors: Mapping[str, Sequence[float] | float] | None = None,
    unit: str = "ms",
    scale: float = 1e3,
    summary: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """Keep one contender's figures for the runner (see :func:`write_results`); the record.

    ``samples`` are its figure in each round (seconds, usually: ``scale`` turns them into
    ``unit``). ``floors`` maps a floor's name to its figures in the same rounds (the ratio is
    then the median round ratio, with their min-max) or to one figure (an ideal: the median
    over it). ``summary`` says whether the runner's summary table shows it (every record is
    in the JSON); ``extra`` adds fields (JSON values) for the chart or a reader.
    """
    med = statistics.median(samples)
    ratio_of: dict[str, dict[str, float]] = {}
    for name, ref in (floors or {}).items():
        if isinstance(ref, (int, float)):
            rs = [s / ref for s in samples]
            ratio_of[name] = {"median": med / ref, "min": min(rs), "max": max(rs)}
        else:
            rs = ratios(samples, ref)
            ratio_of[name] = {"median": statistics.median(rs), "min": min(rs), "max": max(rs)}
    result = {
        "question": question,
        "scenario": scenario,
        "contender": contender,
        "unit": unit,
        "median": med * scale,
        "min": min(samples) * scale,
        "max": max(samples) * scale,
        "noise": noise(samples),
        "rounds": len(samples),
        "ratios": ratio_of,
        "summary": summary,
        **extra,
    }
    RESULTS.append(result)
    return result


def record_times(
    question: str,
    scenario: str,
    times: Mapping[str, Sequence[float]],
    *,
    floors: Mapping[str, str],
    summary: Iterable[str] | None = None,
    **options: Any,
) -> None:
    """:func:`record` every contender of an :func:`alternate` run, with its ratio to each floor.

    ``floors`` maps a floor's name to its contender's label (a floor not in ``times`` is left
    out); ``summary`` lists the labels the summary shows (default: all); ``options`` go to
    :func:`record` (``unit``, ``scale``).
    """
    shown = set(times if summary is None else summary)
    refs = {name: times[label] for name, label in floors.items() if label in times}
    for label, samples in times.items():
        record(question, scenario, label, samples, floors=refs, summary=label in shown, **options)


class _TableRow(Protocol):
    """A row of ``bench_walk``'s tables (its ``Row``): what :func:`record_rows` reads."""

    group: str
    label: str
    samples: list[float]
    client_cpu: float
    floor: list[float] | None
    ideal: float | None
    client_gc: float

    @property
    def rounds_with_full_collection(self) -> int | None: ...


def record_rows(
    question: str,
    rows: Iterable[_TableRow],
    *,
    floor: str = "aiohttp worker floor",
    ideal: str = "ideal+cost",
) -> None:
    """:func:`record` every row of a walk's table: the ratio to the floor (a row that has one
    is the SDK's: in the summary) and to the ideal; the concurrency (the label's last number),
    the ideal, the client's CPU, its garbage collections' time in ms and the rounds a full
    collection fell in go along for the chart and a reader."""
    for row in rows:
        floors: dict[str, Sequence[float] | float] = {}
        if row.floor is not None:
            floors[floor] = row.floor
        if row.ideal:
            floors[ideal] = row.ideal
        number = re.findall(r"\d+", row.label)
        record(
            question,
            f"{row.group} a request",
            row.label,
            row.samples,
            floors=floors,
            summary=row.floor is not None,
            concurrency=int(number[-1]) if number else None,
            ideal_ms=row.ideal * 1e3 if row.ideal else None,
            client_cpu_ms=None if row.client_cpu != row.client_cpu else row.client_cpu * 1e3,
            client_gc_ms=None if row.client_gc != row.client_gc else row.client_gc * 1e3,
            rounds_with_full_gc=row.rounds_with_full_collection,
        )


def write_results(path: str | os.PathLike[str], script: str) -> None:
    """Write what :func:`record` kept, with the machine and the command, as JSON to ``path``;
    then forget it (a script run twice in one process writes each run's own)."""
    document = {
        "script": script,
        "machine": machine_info(),
        "command": " ".join(["python -m", f"benchmarks.{script}", *sys.argv[1:]]),
        "results": RESULTS,
    }
    Path(path).write_text(json.dumps(document, indent=1, allow_nan=False), encoding="utf-8")
    RESULTS.clear()


# -- the simulator in a process of its own ------------------------------------------------------


def _exit_on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def children_stopped_on_sigterm() -> Iterator[None]:
    """While the block runs, SIGTERM ends this process the way Ctrl+C does: by unwinding it.

    By default SIGTERM (``kill``, a CI timeout) ends Python on the spot, and the children a
    benchmark started (the simulator, Redis, arq workers), which serve until told to stop,
    were left running. Unwound, every ``with`` block that started one stops it. Each script's
    ``__main__`` runs in this block (the main thread only: Python runs handlers there).
    """
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
