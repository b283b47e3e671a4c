"""``dmhub-async``: export customers, resolve identities, run the simulator, see a demo.

Credentials come from ``DMHUB_APP_ID``, ``DMHUB_SECRET`` and ``DMHUB_BASE_URL``. Errors are one
line on stderr and a non-zero exit, never a traceback, never a secret.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

from ._client import DMHubClient
from ._exceptions import APIConnectionError, DMHubError, InvalidRequestError
from ._redact import redact
from .export import ExportProgress, ExportReport, export_customers
from .models.identity import Identity

__all__ = ["main"]

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad option reported as one line (the usage is on ``--help``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="dmhub-async",
        description="The DM Hub customer API from the command line "
        "(credentials: DMHUB_APP_ID, DMHUB_SECRET, DMHUB_BASE_URL).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    export = sub.add_parser("export", help="export customers to a JSONL or CSV file")
    export.add_argument("--out", required=True, help="the output file (.jsonl or .csv)")
    export.add_argument("--format", choices=("jsonl", "csv"), help="default: from --out")
    export.add_argument("--page-size", type=_positive_int, default=100)
    export.add_argument("--concurrency", type=_positive_int, default=8)
    export.add_argument("--checkpoint", help="record progress here; rerun to resume")
    export.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_max_retries(export)
    _add_filters(export)

    lookup = sub.add_parser("lookup", help="resolve identities to customer ids")
    lookup.add_argument("--in", dest="infile", required=True, help="CSV of type,value rows")
    lookup.add_argument("--out", required=True, help="CSV of type,value,customer_id rows")
    lookup.add_argument("--concurrency", type=_positive_int, default=32)
    _add_max_retries(lookup)

    simulate = sub.add_parser("simulate", help="serve the DM Hub simulator on 127.0.0.1")
    simulate.add_argument("--port", type=int, default=8080)
    simulate.add_argument("--customers", type=_non_negative_int, default=10_000)
    simulate.add_argument("--latency-ms", type=float, default=0.0)
    simulate.add_argument("--fault-rate", type=float, default=0.0)
    simulate.add_argument("--seed", type=int, default=0)

    demo = sub.add_parser("demo", help="export a seeded in-process simulator, with a progress bar")
    demo.add_argument("--customers", type=_non_negative_int, default=20_000)
    demo.add_argument("--out", default="dmhub-demo.jsonl")
    demo.add_argument("--concurrency", type=_positive_int, default=8)
    demo.add_argument("--latency-ms", type=float, default=20.0)
    return parser


def _add_max_retries(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-retries",
        type=_non_negative_int,
        default=4,
        help="retries of a failed request (default 4; 0 fails at once)",
    )


def _add_filters(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("filters")
    group.add_argument("--stage", help="a stage; '' for customers with no stage")
    group.add_argument("--source")
    group.add_argument("--mobile")
    group.add_argument("--email")
    group.add_argument("--gender", type=int, choices=(0, 1, 2))
    group.add_argument("--created-from", dest="date_created_from", metavar="UTC_TIME")
    group.add_argument("--created-to", dest="date_created_to", metavar="UTC_TIME")
    group.add_argument("--updated-from", dest="last_updated_from", metavar="UTC_TIME")
    group.add_argument("--updated-to", dest="last_updated_to", metavar="UTC_TIME")
    group.add_argument("--select", help="comma-separated fields")


_FILTER_DESTS = (
    "stage",
    "source",
    "mobile",
    "email",
    "gender",
    "date_created_from",
    "date_created_to",
    "last_updated_from",
    "last_updated_to",
    "select",
)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, not {value}")
    return value


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    filters = {k: getattr(args, k) for k in _FILTER_DESTS if getattr(args, k) is not None}
    if "select" in filters:
        filters["select"] = [f.strip() for f in filters["select"].split(",") if f.strip()]
    return filters


def _print_report(report: ExportReport) -> int:
    print(report.summary())
    return EXIT_OK if report.complete else EXIT_INCOMPLETE


async def _export(args: argparse.Namespace) -> int:
    async with DMHubClient(max_retries=args.max_retries) as dm:
        report = await export_customers(
            dm,
            args.out,
            format=args.format,
            page_size=args.page_size,
            concurrency=args.concurrency,
            checkpoint=args.checkpoint,
            progress=not args.no_progress,
            **_filters(args),
        )
    return _print_report(report)


async def _read_identities(path: Path) -> AsyncIterator[Identity]:
    with path.open(newline="", encoding="utf-8-sig") as fh:
        for number, row in enumerate(csv.reader(fh), 1):
            if not row or not "".join(row).strip():
                continue
            if number == 1 and [c.strip().lower() for c in row[:2]] == ["type", "value"]:
                continue  # a header
            if len(row) < 2:
                raise InvalidRequestError(f"{path}:{number}: expected type,value")
            yield Identity(row[0].strip(), row[1].strip())


def _is_file(path: Path) -> bool:
    return path.is_file()


def _open_text(path: Path) -> IO[str]:
    return path.open("w", newline="", encoding="utf-8")


async def _lookup(args: argparse.Namespace) -> int:
    infile, outfile = Path(args.infile), Path(args.out)
    if not _is_file(infile):
        raise InvalidRequestError(f"no such file: {str(infile)!r}")
    found = missing = 0
    async with DMHubClient(max_retries=args.max_retries) as dm:
        with _open_text(outfile) as out:
            writer = csv.writer(out, lineterminator="\r\n")
            writer.writerow(["type", "value", "customer_id"])
            async for identity, customer_id in dm.identities.lookup_iter(
                _read_identities(infile), concurrency=args.concurrency
            ):
                writer.writerow(
                    [identity.type, identity.value, "" if customer_id is None else customer_id]
                )
                if customer_id is None:
                    missing += 1
                else:
                    found += 1
    print(f"resolved {found + missing} identities: {found} found, {missing} not found -> {outfile}")
    return EXIT_OK


async def _simulate(args: argparse.Namespace) -> int:
    from .testing import serve_forever

    await serve_forever(
        port=args.port,
        customers=args.customers,
        latency_ms=args.latency_ms,
        fault_rate=args.fault_rate,
        seed=args.seed,
    )
    return EXIT_OK


async def _demo(args: argparse.Namespace) -> int:
    from .testing import DMHubSimulator

    print(f"seeding an in-process DM Hub simulator with {args.customers:,} customers ...")
    started = time.monotonic()
    async with DMHubSimulator(customers=args.customers) as sim:
        sim.faults.latency = args.latency_ms / 1000.0
        print(f"simulator at {sim.url} ready in {time.monotonic() - started:.1f}s; exporting ...")
        async with DMHubClient(sim.app_id, sim.secret, base_url=sim.url) as dm:
            report = await export_customers(
                dm,
                args.out,
                concurrency=args.concurrency,
                progress=True,
                on_progress=None if sys.stderr.isatty() else _log_progress(),
            )
    return _print_report(report)


def _log_progress() -> Any:
    """Progress lines for a log (a bar needs a terminal): one every 10%."""
    state = {"next": 0.0}

    def show(p: ExportProgress) -> None:
        if p.total and p.exported / p.total >= state["next"]:
            print(f"  {p.exported:,}/{p.total:,} customers ({p.pages} pages)", file=sys.stderr)
            state["next"] = p.exported / p.total + 0.1

    return show


_COMMANDS = {"export": _export, "lookup": _lookup, "simulate": _simulate, "demo": _demo}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    secrets = (os.environ.get("DMHUB_SECRET"),)
    try:
        return asyncio.run(_COMMANDS[args.command](args))
    except KeyboardInterrupt:
        print("dmhub-async: interrupted", file=sys.stderr)
        return 130
    except (DMHubError, OSError, ValueError) as err:
        message = str(err) or type(err).__name__
        if isinstance(err, APIConnectionError):
            where = os.environ.get("DMHUB_BASE_URL") or "the default base URL"
            message += f": no answer from {where} (is DMHUB_BASE_URL right?)"
        message = redact(message, secrets)
        print(f"dmhub-async: error: {message}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
