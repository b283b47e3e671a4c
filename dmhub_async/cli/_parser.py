"""The flags of ``dmhub-async``: every one with its default, every command with an example."""

from __future__ import annotations

import argparse
import math
import zoneinfo
from collections.abc import Callable
from typing import Any, NoReturn

from .._exceptions import InvalidRequestError
from .._pagination import MAX_CONCURRENCY
from .._query_time import did_you_mean
from .._shared_rate import check_shared_rate
from .._validate import short
from .._version import __version__
from ..shards import MAX_SHARDS
from ._errors import EXIT_USAGE
from ._settings import REDIS_PASSWORD_ENV, TOKEN_STORE_ENV

__all__ = ["FILTER_FLAGS", "MAX_CONCURRENCY", "build_parser"]

# MAX_CONCURRENCY, the most pages or lookups in flight: the paginator's cap (64). DM Hub's rate
# limits are not published and it throttles (429/503) long before that; a walk by id holds
# ``concurrency`` pages of 100 rows, so more only costs memory; and beyond a few dozen requests
# a 30 ms round trip is no longer the bottleneck (benchmarks/README.md).

#: Filter flag -> the keyword of ``export_customers`` it sets.
FILTER_FLAGS = {
    "--stage": "stage",
    "--source": "source",
    "--mobile": "mobile",
    "--email": "email",
    "--gender": "gender",
    "--created-from": "date_created_from",
    "--created-to": "date_created_to",
    "--updated-from": "last_updated_from",
    "--updated-to": "last_updated_to",
    "--select": "select",
}

EXIT_CODES = """\
exit codes: 0 ok, 1 error (the service, the network, the credentials, a file read: --in or
--id-list missing, unreadable, empty or with a bad line; a disk full), 2 usage (a bad flag or value,
or an output that would destroy a file), 3 incomplete (the export's count differs from the
service's), 130 SIGINT (Ctrl-C), 143 SIGTERM, 141 the reader of --out - went away (| head -1)"""


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Every flag's default after its help; the examples in the epilog kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help = action.help or ""
        # By identity: ``0 in (None, False)`` is true (0 == False), which hid a default of 0.
        hidden = action.default is None or action.default is False
        if action.option_strings and not hidden and action.default is not argparse.SUPPRESS:
            help += " (default: %(default)s)"
        return help


class _Parser(argparse.ArgumentParser):
    """argparse, with a bad option reported as one line (the usage is on ``--help``), and every
    flag taken only as it is spelt.

    argparse took any unique start of a flag: ``--allow`` was ``--allow-insecure-http`` (the
    secret sent in clear) or merge's ``--allow-incomplete``, without a word, and a start that
    was unique once stopped a cron job when a flag was added (0.1.0's ``--for csv`` now reads
    as ``--format`` or ``--force``). Its commands are parsers of this class too.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"dmhub-async: error: {message} (see {self.prog} --help)\n")


#: The simulator's MAX_CUSTOMERS, without importing it (and aiohttp.web) to read the flags;
#: tests/test_cli_usage.py holds the two equal.
MAX_SEEDED = 100_000_000
DEMO_OUT = "dmhub-demo.jsonl"
#: ``worker --stop-timeout``'s default, seconds: within the 30 s that Kubernetes (and our
#: benchmark) give a SIGTERM before a SIGKILL, which says nothing of what the stop waited on.
STOP_TIMEOUT = 20.0


def _int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
        if value < low or (high is not None and value > high):
            span = f"at least {low}" if high is None else f"from {low} to {high}"
            raise argparse.ArgumentTypeError(f"must be {span}, not {value}")
        return value

    return parse


def _float_in(low: float, high: float | None = None) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not value >= low or (high is not None and value > high):
            span = f"at least {low}" if high is None else f"from {low} to {high}"
            raise argparse.ArgumentTypeError(f"must be {span}, not {text}")
        if not math.isfinite(value):  # --latency-ms inf: the demo waited for ever
            raise argparse.ArgumentTypeError(f"must be a finite number, not {text}")
        return value

    return parse


def _shared_rate(text: str) -> float:
    """``worker --rate-limit``: a rate the shared limit keeps, checked as the flags are read.

    Checked by the worker as it started, a rate no window holds (50.01) was an error (exit 1)
    naming the Python argument, and only once its Redis had been reached.
    """
    value = _float_in(0.001)(text)
    try:
        check_shared_rate("rate", value)
    except InvalidRequestError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return value


def _queue_url(text: str) -> str:
    """``export --queue``: a Redis URL, not an empty one.

    ``--queue "$QUEUE"`` with the variable unset was taken as no queue: the shards meant for
    the fleet's workers all ran on this machine, in one process, exit 0.
    """
    if not text.strip():
        raise argparse.ArgumentTypeError(
            f"{text!r} names no Redis (an unset variable?): give redis://HOST:PORT/DB"
        )
    return text


def _file_name(text: str) -> str:
    """A file's name (or ``-``), not an empty one: ``--id-list "$IDS"`` with the variable
    unset was read as ``.``, "--id-list  is a directory", exit 1."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} names no file (an unset variable?)")
    return text


def _time_zone(text: str) -> str:
    try:
        zoneinfo.ZoneInfo(text)
    # OSError: a directory of the zone database ("Asia", "America") or a name too long for a
    # file was a raw IsADirectoryError and its traceback (DMHubClient(timezone=...) refuses it).
    except (ValueError, zoneinfo.ZoneInfoNotFoundError, OSError):
        # The one meant, as DMHubClient(timezone=...) names it ("america/new_york", "tokyo"):
        # any name was told "say Asia/Shanghai".
        meant = did_you_mean(text) or " (say Asia/Shanghai, or UTC)"
        raise argparse.ArgumentTypeError(f"not an IANA time zone: {short(text)}{meant}") from None
    return text


#: What ``-v`` shows, by command: "log every request" was every command's help, merge's (which
#: sends none: -v shows nothing more there) and simulate's (which logs no request it serves).
_REQUESTS = "log every request and retry on stderr"
_VERBOSE = {
    "worker": "log every request and retry, and each job's start and end, on stderr",
    "simulate": "log on stderr each request a client left before its answer (the requests "
    "served are not logged)",
    "merge": "no effect: merge sends no request (its warnings show without it)",
}


def _common(command: str) -> _Parser:
    common = _Parser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="store_true", help=_VERBOSE.get(command, _REQUESTS)
    )
    worker = command == "worker"  # kept for 0.1.0's command lines: a fleet's units give them
    common.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help=WORKER_QUIET
        if worker
        else "no progress and no text report: errors, and warnings of what changes the run, only",
    )
    common.add_argument(
        "--report",
        choices=("text", "json"),
        default="text",
        help=WORKER_REPORT
        if worker
        else "the report after the run: text for people, json (one object) for scripts",
    )
    return common


#: What -q and --report do for ``worker``: nothing (it prints its errors and failed shards
#: alone, and writes no report); taken, as 0.1.0 took them, not refused.
WORKER_QUIET = "no effect: a worker prints only its errors and failed shards"
WORKER_REPORT = (
    "no effect: a worker writes no report; its shards' outcomes are in the report of the"
    " export that queued them (export --queue ... --report json)"
)


#: Where --token-store defaults to (`worker` and `export --queue` take a Redis in
#: DMHUB_TOKEN_STORE, else the queue's, and refuse a file or memory there or in the flag:
#: cli/_shards.py).
_STORE_DEFAULT = f"${TOKEN_STORE_ENV}, else a file in your cache directory"
_QUEUE_STORE = (
    f"${TOKEN_STORE_ENV} if a redis:// URL, else the queue's Redis; a file or memory, "
    f"given here or in ${TOKEN_STORE_ENV}, is refused (the queue's workers cannot share it)"
)
_STORE_DEFAULTS = {
    "export": _STORE_DEFAULT + f" (with --queue: {_QUEUE_STORE})",
    "worker": _QUEUE_STORE,
}


#: A worker's --concurrency, and what it is when not given.
_WORKER_CONCURRENCY = (
    f"requests in flight on this worker, at most {MAX_CONCURRENCY}, its --jobs sharing them; "
    "each shard it exports walks this many pages at once, in place of the export's "
    "--concurrency (default: the export's --concurrency for each shard, 16 in flight in all)"
)


def _client_flags(
    parser: argparse.ArgumentParser, concurrency: int | None, command: str = ""
) -> None:
    parser.add_argument(
        "--concurrency",
        type=_int_in(1, MAX_CONCURRENCY),
        default=concurrency,
        metavar="N",
        help=_WORKER_CONCURRENCY
        if command == "worker"
        else f"requests in flight, at most {MAX_CONCURRENCY}",
    )
    parser.add_argument(
        "--max-retries",
        type=_int_in(0),
        metavar="N",
        default=4,
        help="retries of a failed request (0 fails at once)",
    )
    parser.add_argument(
        "--allow-insecure-http",
        action="store_true",
        help="accept a plain http:// DMHUB_BASE_URL off this machine (the secret and the token "
        "would cross the network readable by anyone on the way)",
    )
    parser.add_argument(
        "--token-store",
        metavar="STORE",
        help="where runs with one app id share its token: memory, file:PATH, or a Redis "
        "(redis://HOST, rediss://HOST, unix://PATH); "
        f"default: {_STORE_DEFAULTS.get(command, _STORE_DEFAULT)} (a Redis password: "
        f"${REDIS_PASSWORD_ENV}, not in the URL, which ps shows)",
    )


def _output_flags(parser: argparse.ArgumentParser, what: str, force: str = "") -> None:
    parser.add_argument(
        "--force",
        action="store_true",
        help=f"overwrite --out if it exists (a regular file){force}",
    )
    parser.add_argument(
        "--encoding",
        default="utf-8",
        metavar="NAME",
        help=f"text encoding of {what} (utf-8-sig adds the mark Excel looks for)",
    )


def _filters(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("filters (all optional; times are ISO 8601)")
    group.add_argument("--stage", help="a stage; '' for customers with no stage")
    group.add_argument("--source", help="a source, e.g. wechat")
    group.add_argument("--mobile", help="a mobile number")
    group.add_argument("--email", help="an email address")
    group.add_argument("--gender", type=int, choices=(0, 1, 2), help="0 unknown, 1 male, 2 female")
    for flag, what in (
        ("--created-from", "created at or after"),
        ("--created-to", "created at or before"),
        ("--updated-from", "last updated at or after"),
        ("--updated-to", "last updated at or before"),
    ):
        group.add_argument(flag, dest=FILTER_FLAGS[flag], metavar="TIME", help=what)
    group.add_argument(
        "--timezone",
        type=_time_zone,
        metavar="ZONE",
        help="IANA zone of times without an offset (e.g. Asia/Shanghai); default: UTC",
    )
    group.add_argument(
        "--select", metavar="F1,F2", help="only these fields (and id), in the file too"
    )
    group.add_argument(
        "--id-list",
        type=_file_name,
        metavar="FILE",
        help="only the customers of these ids: a file of one id a line (blank lines and "
        "repeats skipped; any order, resumed as the same export), - for standard input; "
        "with the other filters too",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``dmhub-async`` parser."""
    parser = _Parser(
        prog="dmhub-async",
        description="The DM Hub customer API from the command line.\n"
        "Credentials: DMHUB_APP_ID, DMHUB_SECRET; service: DMHUB_BASE_URL "
        "(default https://api.convertlab.com).",
        epilog=f"example:\n  dmhub-async demo\n  dmhub-async export --out customers.jsonl\n\n"
        f"{EXIT_CODES}\nDMHUB_LOG=debug|info shows the library's log on stderr.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"dmhub-async {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help: str, example: str) -> argparse.ArgumentParser:
        return sub.add_parser(
            name,
            help=help,
            description=help,
            parents=[_common(name)],
            formatter_class=_Formatter,
            epilog=f"example:\n  {example}\n\n{EXIT_CODES}",
        )

    export = command(
        "export",
        "export customers to a JSONL or CSV file, each exactly once",
        "dmhub-async export --out leads.csv --stage lead --checkpoint leads.ckpt\n"
        "  dmhub-async export --out some.jsonl --id-list ids.txt --checkpoint some.ckpt\n"
        "  dmhub-async export --out exports/june --shards 16 --workers 4   # a directory of parts\n"
        "  dmhub-async export --out /shared/june --shards 64 --queue redis://queue.internal:6379/0",
    )
    export.add_argument(
        "--out",
        required=True,
        metavar="PATH",
        help="the output file: .jsonl (or .ndjson) or .csv, another name with --format; or -"
        " for standard output",
    )
    export.add_argument("--format", choices=("jsonl", "csv"), help="default: from --out")
    export.add_argument(
        "--checkpoint", metavar="PATH", help="record progress here; rerun the command to resume"
    )
    export.add_argument(
        "--page-size", type=_int_in(1, 100), default=100, metavar="N", help="customers a request"
    )
    export.add_argument(
        "--verify",
        choices=("auto", "always"),
        default="auto",
        help="when the final check (an id-only walk) runs: auto (the default), when the export"
        " was resumed or anything suggests customers changed; always, after every export (with"
        " --shards: after every shard, and kept by every rerun of the directory's export)",
    )
    export.add_argument("--no-progress", action="store_true", help="no progress bar or lines")
    _client_flags(export, concurrency=8, command="export")
    _output_flags(export, "a CSV --out", " or, with --shards, holds another export's parts")
    _filters(export)
    _shard_flags(export)

    lookup = command(
        "lookup",
        "resolve identities (type,value rows) to customer ids",
        "dmhub-async lookup --in identities.csv --out found.csv --encoding gbk",
    )
    lookup.add_argument(
        "--in",
        dest="infile",
        required=True,
        metavar="PATH",
        help="CSV of type,value rows (a header is optional); - reads standard input",
    )
    lookup.add_argument(
        "--out",
        required=True,
        metavar="PATH",
        help="type,value,customer_id rows: CSV (.csv, another name), JSON lines (.jsonl or"
        " .ndjson), or - for standard output (CSV unless --format jsonl)",
    )
    lookup.add_argument("--format", choices=("csv", "jsonl"), help="default: from --out, csv for -")
    _client_flags(lookup, concurrency=32)
    _output_flags(lookup, "--in and a CSV --out")

    simulate = command(
        "simulate",
        "serve the DM Hub simulator on 127.0.0.1 until Ctrl-C",
        "dmhub-async simulate --port 8080 --customers 50000 --latency-ms 20",
    )
    simulate.add_argument(
        "--port", type=_int_in(0, 65535), default=8080, help="0 picks a free port"
    )
    simulate.add_argument(
        "--customers", type=_int_in(0, MAX_SEEDED), default=10_000, help="seeded customers"
    )
    simulate.add_argument(
        "--latency-ms", type=_float_in(0.0), default=0.0, help="added to every answer"
    )
    simulate.add_argument(
        "--fault-rate", type=_float_in(0.0, 1.0), default=0.0, help="share of requests that fail"
    )
    simulate.add_argument("--seed", type=int, default=0, help="seed of the data and the faults")

    demo = command(
        "demo",
        "export a seeded in-process simulator, with simulated network latency",
        "dmhub-async demo --customers 5000 --latency-ms 0",
    )
    demo.add_argument(
        "--customers", type=_int_in(0, MAX_SEEDED), default=20_000, help="seeded customers"
    )
    demo.add_argument(
        "--out",
        help=f"the output file (default {DEMO_OUT}, the demo's own, replaced by every run)",
    )
    demo.add_argument(
        "--force", action="store_true", help="overwrite --out if it exists (a regular file)"
    )
    demo.add_argument(
        "--concurrency",
        type=_int_in(1, MAX_CONCURRENCY),
        default=8,
        metavar="N",
        help=f"pages in flight, at most {MAX_CONCURRENCY}",
    )
    demo.add_argument(
        "--latency-ms",
        type=_float_in(0.0),
        default=20.0,
        help="simulated latency of every answer, as a real network has",
    )
    _shard_commands(command)
    return parser


def _shard_flags(export: argparse.ArgumentParser) -> None:
    group = export.add_argument_group(
        "sharded export (--out is then a directory of part files and manifest.json)"
    )
    group.add_argument(
        "--shards",
        type=_int_in(1, MAX_SHARDS),
        metavar="N",
        help="split the customers into about N dateCreated windows, one part file each (a "
        "second holding more than a share is one more; with --id-list: its ids sorted, in N "
        "slices); a rerun on the directory resumes the plan it holds, whatever N; once every "
        "part is complete, the last window is checked again and the customers created since "
        "its shard ended are added to its part",
    )
    group.add_argument(
        "--workers",
        type=_int_in(1, MAX_CONCURRENCY),
        default=1,
        metavar="K",
        help="processes of this machine that export the shards (with --shards)",
    )
    group.add_argument(
        "--queue",
        type=_queue_url,
        metavar="REDIS_URL",
        help="run the shards (with --shards) as jobs on this arq queue, served by "
        "`dmhub-async worker`; also "
        "the shared token store, as for the workers, unless --token-store is given "
        f"(its password: ${REDIS_PASSWORD_ENV}, not in the URL, which ps shows)",
    )


def _shard_commands(command: Callable[[str, str, str], argparse.ArgumentParser]) -> None:
    worker = command(
        "worker",
        "serve sharded-export jobs from the arq queue on a Redis, until stopped",
        "dmhub-async worker --redis redis://queue.internal:6379/0 --rate-limit 50",
    )
    worker.add_argument(
        "--redis",
        required=True,
        metavar="URL",
        help="the queue; also the shared token store and the shared rate limit (its "
        f"password: ${REDIS_PASSWORD_ENV}, not in the URL, which ps shows)",
    )
    worker.add_argument(
        "--rate-limit",
        type=_shared_rate,
        metavar="PER_SECOND",
        help="requests per second shared by every worker of the app on this Redis given the"
        " same value; give each the same (default: none, this worker not limited)",
    )
    worker.add_argument(
        "--jobs", type=_int_in(1, MAX_CONCURRENCY), default=1, help="shards exported at once"
    )
    worker.add_argument(
        "--burst",
        action="store_true",
        help="stop when the queue is empty: exit 1 when a shard job it ran failed, 0 when all "
        "succeeded or none were queued",
    )
    worker.add_argument(
        "--stop-timeout",
        type=_float_in(0.1),
        default=STOP_TIMEOUT,
        metavar="SECONDS",
        help="the longest its stop may take once a SIGTERM or Ctrl-C came: past it, it says "
        "what it waits on and exits at once",
    )
    worker.add_argument(
        "--mount",
        action="append",
        default=[],
        metavar="COORDINATOR_PATH=LOCAL_PATH",
        help="this machine mounts the export's shared directory at LOCAL_PATH where the "
        "coordinator (export --queue) has it at COORDINATOR_PATH; a job's directory is then "
        "checked to hold its export's manifest (repeat for more volumes)",
    )
    _client_flags(worker, concurrency=None, command="worker")

    merge = command(
        "merge",
        "concatenate the parts of a sharded export into one file, in shard order",
        "dmhub-async merge exports/june --out june.jsonl",
    )
    merge.add_argument("directory", metavar="DIR", help="the directory `export --shards` wrote")
    merge.add_argument("--out", required=True, metavar="PATH", help="the merged file")
    merge.add_argument(
        "--force", action="store_true", help="overwrite --out if it exists (a regular file)"
    )
    merge.add_argument(
        "--allow-incomplete",
        action="store_true",
        help="merge the parts there are even if the export is not complete",
    )
