"""What every benchmark script shares: the machine line, alternating rounds, the ratio table.

Machine noise is real, so contenders never run in blocks: round after round each runs once,
the order reversed every other round so none always follows the same one. A contender is
reported as the median and the min-max of its rounds, and its ratio to the reference as the
median, over rounds, of its time over the reference's time in the same round (a noisy round
slows both, and the ratio of that round stays honest).
"""

from __future__ import annotations

import os
import platform
import statistics
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from importlib import metadata

__all__ = [
    "LIBRARIES",
    "alternate",
    "alternate_async",
    "machine_info",
    "ratio_table",
    "ratios",
    "version",
]

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
