"""The four commands: ``export``, ``lookup``, ``simulate`` and ``demo``."""

from __future__ import annotations

import argparse
import codecs
import csv
import errno
import itertools
import json
import operator
import os
import re
import sys
import time
import unicodedata
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, TextIO

import attrs

from .._client import DMHubClient
from .._exceptions import (
    APIError,
    AuthenticationError,
    InvalidRequestError,
    RateLimitError,
    ServerError,
)
from .._query_time import zone_setting
from .._redact import redact
from .._validate import check_identity, mangled_value, printable
from .._words import counted
from ..export import ExportReport, export_customers
from ..export._export import FORMAT_OF_SUFFIX
from ..export._output import REPLACED_BESIDE
from ..export._report import VERIFY_FLAG
from ..models.identity import Identity
from ..resources._batches import check_export_room
from ..resources._filters import _filter_params
from ._errors import (
    EXIT_INCOMPLETE,
    EXIT_OK,
    CommandError,
    UsageError,
    interruptible,
    say,
    without_method,
    work_done,
)
from ._files import (
    STDIN,
    STDOUT,
    appeared,
    check_checkpoint,
    check_output,
    counted_noting,
    decoded_lines,
    export_stdout,
    no_such_file,
    read_id_file,
    read_twice,
    remove_left_behind,
    replace_on_success,
)
from ._parser import DEMO_OUT, FILTER_FLAGS
from ._report import (
    ProgressLines,
    export_report,
    ids_listed,
    print_report,
    reading,
    shown,
    standard_output,
    ticking,
)
from ._settings import open_client
from ._shards import merge_command, sharded_export, worker_command

__all__ = ["COMMANDS"]

ExportEncoding = Literal["utf-8", "utf-8-sig"]


def _filters(args: argparse.Namespace) -> dict[str, Any]:
    """The filter flags as ``export_customers`` keywords, each checked and named by its flag.

    A time without an offset under no ``--timezone`` is read as UTC: a note says so (in place
    of the library's warning, which names a Python setting).
    """
    zone = zone_setting(args.timezone)
    filters: dict[str, Any] = {}
    naive: list[str] = []
    for flag, name in FILTER_FLAGS.items():
        value = getattr(args, name)
        if value is None:
            continue
        if name == "select":
            value = [f.strip() for f in value.split(",") if f.strip()]
            if not value:  # `--select "$FIELDS"`, FIELDS unset: a file of ids alone
                raise UsageError(
                    f"--select {args.select!r} names no field (ids alone: --select id)"
                )
        try:
            if _filter_params("export", {name: value}, paged=True, zone=zone)[1]:
                naive.append(flag)
        except InvalidRequestError as err:
            # The name, not the value quoted ('select' in "--select name,select" was shown
            # as '--select', a field the user had not given).
            message = re.sub(rf"(?<!['\"])\b{name}\b(?!['\"])", flag, without_method(str(err)))
            raise UsageError(message if flag in message else f"{flag}: {message}") from None
        filters[name] = value
    try:  # together: --created-to before --created-from was refused later, exit 1, unnamed
        params = _filter_params("export", filters, paged=True, zone=zone)[0]
        if args.id_list is None:
            # As the export's walks send them (a sharded one's with its windows' bounds).
            check_export_room("export", params, windowed=getattr(args, "shards", None) is not None)
    except InvalidRequestError as err:
        raise _filters_refused(err) from None
    if args.id_list is not None:  # after the checks above: they would join every id
        ids = filters["id_list"] = read_id_file(args.id_list)
        try:
            # As an id list's walks send them (no window), with room for its longest id, as
            # the export takes them: room for 19 digits, and a shard's window, refused filters
            # that leave its ids room (a stage of 6,085 to 6,110 bytes, 10-digit ids).
            check_export_room("export", params, longest_id=max(ids))
        except InvalidRequestError as err:
            raise _filters_refused(err) from None
    if naive and not args.quiet:
        say(
            f"dmhub-async: note: {' and '.join(naive)} without an offset read as UTC; give "
            "--timezone (e.g. Asia/Shanghai) or an offset (+08:00)"
        )
    return filters


def _filters_refused(err: InvalidRequestError) -> UsageError:
    """The refusal of the filters, naming each by its flag."""
    message = without_method(str(err))
    for flag, name in FILTER_FLAGS.items():
        # A keyword as a whole word, not a parameter as sent: "select=id", which the export's
        # walks add, was said as "--select=id", a flag the user had not given.
        message = re.sub(rf"(?<!['\"])\b{name}\b(?![='\"])", flag, message)
    return UsageError(message)


def _encoding(args: argparse.Namespace) -> str:
    try:
        info = codecs.lookup(args.encoding)
    except LookupError:
        # Notepad's and Notepad++'s names, which Python does not know.
        name = re.sub(r"[\s_-]", "", args.encoding.lower())
        meant = {"ansi": "gbk", "utf8bom": "utf-8-sig", "utf8withbom": "utf-8-sig"}.get(name)
        hint = ": utf-8, utf-8-sig, gbk, gb18030, big5..."
        if meant == "gbk":
            hint = f" (on Chinese Windows: --encoding {meant})"
        elif meant:
            hint = f": --encoding {meant}"
        raise UsageError(f"--encoding {args.encoding!r}: no such encoding{hint}") from None
    # Files are read line by line on the newline byte, and as text: UTF-16 split in the middle
    # of its characters (a raw csv.Error), rot13 or base64 failed with a raw TypeError.
    text, readable = "type,value\n", getattr(info, "_is_text_encoding", True)
    if readable:
        encoder = info.incrementalencoder()
        encoder.encode("x")  # past a byte order mark (utf-8-sig writes one first)
        readable = encoder.encode(text) == text.encode()  # ASCII-compatible
    if not readable:
        raise UsageError(
            f"--encoding {args.encoding}: not an encoding CSV files are read in here (UTF-8, GBK,"
            " GB18030, Big5, Latin-1...): save the file as UTF-8 (Excel: CSV UTF-8)"
        )
    return info.name


def _report_stream(args: argparse.Namespace) -> TextIO:
    """The report's stream: stdout, unless the data goes there."""
    return sys.stderr if args.out == STDOUT else sys.stdout


def _progress(args: argparse.Namespace) -> tuple[bool, ProgressLines | None]:
    """A bar on a terminal, lines in a log, nothing when ``--quiet``."""
    if args.quiet or getattr(args, "no_progress", False):
        return False, None
    if sys.stderr.isatty():
        return True, None
    return False, ProgressLines()


def _finish(
    report: ExportReport,
    args: argparse.Namespace,
    out: TextIO,
    *,
    again: str | None = None,
    listed: int | None = None,
    verify_flag: bool = True,
) -> int:
    """The report printed; the exit code. ``again``: the flag the rerun an incomplete export
    asks for needs (``--force``, to replace a file in place that no checkpoint covers).
    ``listed``: the ids of ``--id-list``, each once (JSON ``ids_listed``, as a sharded
    export's report gives them; null without a list). ``verify_flag``: whether the command
    takes ``--verify``, which the report's advice names (``demo`` does not: it refused it)."""
    text = attrs.evolve(report, path=shown(report.path)).summary()  # one line each, as said
    if not verify_flag:
        text = text.replace(VERIFY_FLAG, "")
    if listed is not None:  # the ids of no customer were said nowhere: "count 110 before"
        text += f"\nid list       {ids_listed(listed, report.exported, complete=report.complete)}"
    rerun = "run it again" + (f" with {again} (it replaces the file)" if again else "")
    if again and not report.complete:
        text += f"\nagain         {rerun}: the same command without it refuses the file"
    data = {**export_report(report), "ids_listed": listed}
    print_report(data, text, style=args.report, quiet=args.quiet, out=out)
    if report.complete:
        return EXIT_OK
    if args.quiet and args.report == "text":
        say(
            f"dmhub-async: incomplete: {report.exported} exported, the service counted "
            f"{report.count_before} before and {report.count_after} after; {rerun}"
        )
    return EXIT_INCOMPLETE


def _check_export_name(out: str, fmt: str | None, *, format_flag: bool = True) -> None:
    """Refuse an ``--out`` whose name says neither format, when ``--format`` does not say it.

    ``--out customers.json`` (or ``.txt``, or no extension) was written as JSON lines without a
    word: a JSON reader then failed on its second line. ``format_flag``: whether the command
    has ``--format`` (``demo`` has not) for the message to offer it.
    """
    if out == STDOUT or fmt is not None:
        return
    path = Path(out)
    if path.suffix.lower() in FORMAT_OF_SUFFIX:
        return
    stem = path.stem if path.suffix else path.name
    names = f"{stem}.jsonl (JSON lines) or {stem}.csv"
    raise UsageError(
        f"--out {out}: the format is read from the name, .jsonl, .ndjson or .csv: name it "
        + names
        + (", or give --format jsonl|csv" if format_flag else "")
    )


def _check_export(args: argparse.Namespace) -> tuple[dict[str, Any], ExportEncoding]:
    """Everything an export can get wrong before it sends a request; its filters, encoding."""
    # Ignored, the export ran here in one process, and without the queue's shared token.
    for flag, given in (("--queue", args.queue), ("--workers", args.workers > 1)):
        if given:
            raise UsageError(f"{flag} runs the shards of a sharded export: give --shards N too")
    if args.out == STDOUT and args.checkpoint is not None:
        raise UsageError("--checkpoint needs a file for --out: standard output cannot be resumed")
    resumable = args.checkpoint is not None and os.path.exists(args.checkpoint)
    csv_out = args.format == "csv" or (args.format is None and args.out.lower().endswith(".csv"))
    check_output(
        args.out,
        force=args.force,
        resumable=resumable,
        # The id list too: `--out ids.jsonl --id-list ids.jsonl --force` replaced it.
        inputs=[args.checkpoint, args.id_list],
        checkpoint=args.checkpoint,
        fmt="csv" if csv_out else "jsonl",
        export=True,
    )
    # After check_output: a compressed file's name, a directory, are said as such.
    _check_export_name(args.out, args.format)
    if args.checkpoint is not None:  # a directory, or one that is missing: a usage error too
        check_checkpoint(args.checkpoint)
    filters = _filters(args)
    encoding = _encoding(args)
    if encoding not in ("utf-8", "utf-8-sig"):
        raise UsageError(
            f"--encoding {args.encoding}: an export is written in utf-8, or utf-8-sig for Excel"
        )
    if encoding == "utf-8-sig" and not csv_out:
        raise UsageError("--encoding utf-8-sig is for CSV (--format csv): JSONL is plain utf-8")
    return filters, "utf-8-sig" if encoding == "utf-8-sig" else "utf-8"


async def _export(args: argparse.Namespace) -> int:
    if args.shards is not None:
        return await sharded_export(args, _filters(args))
    filters, encoding = _check_export(args)
    listed = _distinct(filters.get("id_list"))
    bar, lines = _progress(args)
    async with open_client(args, args.concurrency) as dm, ticking(lines):
        try:
            report = await export_customers(
                dm,
                export_stdout() if args.out == STDOUT else args.out,
                format=args.format,
                page_size=args.page_size,
                concurrency=args.concurrency,
                checkpoint=args.checkpoint,
                progress=bar,
                on_progress=lines,
                verify=args.verify,
                encoding=encoding,
                # --out was checked to be free as the run began (or --force given): a file
                # another run put there since is not replaced.
                overwrite=args.force,
                **filters,
            )
        except FileExistsError as err:
            if err.filename is None or not _same_place(err.filename, args.out):
                raise
            raise appeared(args.out) from None
        work_done()  # its file in place: a signal as the client closes no longer stops it
    # Without a checkpoint the file of an incomplete export is in place, finished: the same
    # command is refused ("exists: pass --force"), where its report said "run it again".
    replaces = args.force or args.checkpoint or args.out == STDOUT
    again = None if replaces else "--force"
    return _finish(report, args, _report_stream(args), again=again, listed=listed)


def _same_place(a: str, b: str) -> bool:
    """Whether the paths ``a`` and ``b`` name one place (neither need exist)."""
    return os.path.realpath(a) == os.path.realpath(b)  # resolve() raises on a link loop


def _distinct(ids: list[int] | None) -> int | None:
    """How many ids ``ids`` holds, each once: sorted in place to count them (the export walks
    them sorted, whatever their order), which holds no set of them. 300,000 ids: 20 ms in
    order, 0.2 s shuffled; blocking, so a signal is heard in it."""
    if ids is None:
        return None
    with interruptible():
        ids.sort()
        return 1 + sum(map(operator.ne, ids, itertools.islice(ids, 1, None))) if ids else 0


def _identities(path: Path, encoding: str, name: str | None = None) -> Iterator[Identity]:
    """The ``type,value`` rows of ``path``; a bad row is an error that names its line (of
    ``name``, the input ``path`` is a copy of)."""
    for _, identity in _numbered_identities(path, encoding, name):
        yield identity


def _numbered_identities(
    source: Path, encoding: str, name: str | None = None
) -> Iterator[tuple[int, Identity]]:
    """:func:`_identities`, each with the line it starts on."""
    path = source if name is None else name  # what the messages name
    lines = decoded_lines(source, "utf-8-sig" if encoding == "utf-8" else encoding, name)
    # skipinitialspace: `wechat, "o4..."` kept its quotes in the value (and was not found).
    read = _Read(_without_nul(lines, path))
    reader = csv.reader(read, skipinitialspace=True)
    columns = 2  # a header may name more (a name column), whose cells are then left alone
    headed = False  # under a header naming the type column first: no row's columns swapped
    end = 0  # the line the row before ended on: a cell may span lines (a remark)
    for row in _csv_rows(reader, path, read):
        line, end = end + 1, reader.line_num
        if not row or not "".join(row).strip():
            continue
        if line == 1 and row[0][:4].lower() == "sep=" and len(first := ",".join(row)) == 5:
            # Excel's line naming the separator: sep=, is no row; another is no CSV of commas.
            separator = first[4]
            if separator == ",":
                continue
            said = "tabs" if separator == "\t" else repr(separator)
            raise CommandError(
                f"{path}:1: separated by {said} (its sep= line), not commas: save it as CSV"
                " (Excel: CSV UTF-8)"
            )
        if _is_header(row):
            # On the first row that is not blank (not only line 1), or further down: files
            # joined with their headers (cat a.csv b.csv). Each names the columns under it.
            columns, headed = max(2, len(row)), True
            continue
        if _is_header(row[1::-1]):
            # value,type: looked up as the identity ("value", "type"), and every row under it
            # with its type and value swapped, each "not found", exit 0.
            raise CommandError(
                f"{path}:{line}: its header names the value column first"
                f" ({row[0].strip()},{row[1].strip()}): lookup reads type,value rows: put the"
                " type column first"
            )
        if len(row) == 1 and "\t" in row[0]:  # no identity holds a tab
            raise CommandError(
                f"{path}:{line}: separated by tabs (Excel: Text (Tab delimited)), not commas:"
                " save it as CSV (Excel: CSV UTF-8)"
            )
        if len(row) == 1 and "\uff0c" in row[0]:  # a Chinese input method's comma
            raise CommandError(
                f"{path}:{line}: separated by full-width commas (\uff0c): type them half-width (,)"
            )
        if len(row) < 2 or any(cell.strip() for cell in row[columns:]):
            # A cell past the value: most likely a value holding an unquoted comma, whose
            # first part alone was looked up. Empty ones are Excel's trailing commas. Counted,
            # not quoted: the row is personal data (a mobile, a name beside it), and a line
            # of 200 KB was the whole error line.
            cells = sum(1 for cell in row if cell.strip())
            raise CommandError(
                f"{path}:{line}: expected type,value, found {counted(cells, 'cell')} (a"
                ' value holding a comma must be quoted: wechat,"a,b"; a header naming more'
                " columns allows them)"
            )
        if (
            row[1].strip().lower() in _BUILT_IN_TYPES
            and row[0].strip().lower() not in _BUILT_IN_TYPES
            and (not headed or _reads_as_a_value(row[0]))
        ):
            # value,type with no header: ("13800138000", "mobile") was looked up as a type
            # "13800138000", "not found", exit 0, as under a "value,type" header (above).
            # Under a type,value header the value may be one (a username "email" of a type of
            # the user's own): the whole lookup was refused for it. Not so a row whose type
            # reads as a value, which no type is: every such row under a header was looked up
            # swapped, each "not found", exit 0.
            said = (
                " (its header names the type column first: each row must follow it)"
                if headed
                else " (if they are not swapped, a first line type,value says so)"
            )
            raise CommandError(
                f"{path}:{line}: its value is {row[1].strip()!r}, the name of an identity type:"
                " are the columns swapped? lookup reads type,value rows: put the type column"
                f" first{said}"
            )
        identity = Identity(row[0].strip(), row[1].strip())
        # Before check_identity, which refuses them too, in a program's words.
        mangled = mangled_value(identity.type, identity.value, text=_TEXT_COLUMN)
        if mangled:  # the line, not the value: an identity is personal data
            raise CommandError(f"{path}:{line}: {identity.type} value {mangled}")
        try:
            check_identity("lookup", identity)
        except InvalidRequestError as err:
            raise CommandError(f"{path}:{line}: {without_method(str(err))}") from None
        yield line, identity


#: The service's built-in identity types (docs/contract.md "Identities"), which no value is.
_BUILT_IN_TYPES: Final = frozenset({"wechat", "wechat-unionid", "email", "mobile"})

#: How a spreadsheet keeps a column of numbers as the text it holds.
_TEXT_COLUMN: Final = "format the column as Text in Excel (or WPS) and save the file again"


#: A header's names for the two columns: English, the API's, and Chinese (a file made in
#: Excel or WPS by a Chinese team), each of which was looked up as an identity, or refused.
_HEADER: Final = (
    frozenset({"type", "identitytype", "identity_type", "类型", "身份类型", "标识类型"}),
    frozenset({"value", "identityvalue", "identity_value", "值", "身份值", "标识值"}),
)


def _reads_as_a_value(cell: str) -> bool:
    """Whether ``cell``, in a row's type column, reads as an identity's value, which no type
    is (a type is a name, such as ``taobao-account``): a number (a mobile, as a phone or a
    spreadsheet writes it), an address (its ``@`` full-width too), or WeChat's id."""
    # Its marks as a Chinese input method types them (full-width: "（＋86）138－0013"), or a web
    # page's no-break spaces, as ASCII: such a row was looked up as a type, "not found".
    text = unicodedata.normalize("NFKC", cell).strip()
    return (
        "@" in text
        or "\uff20" in text
        or text.translate(_PHONE_MARKS).isdigit()
        or _VALUE_LIKE.fullmatch(text) is not None
        # An openid or unionid: 28 letters, digits, - and _, of both cases; a type in the
        # reference's style (lower case, dashes) as long is none.
        or (_WECHAT_ID.fullmatch(text) is not None and not text.islower())
    )


#: What a phone number is written with besides its digits: ``+86 (138) 0013-8000``, ``138.0013``.
_PHONE_MARKS: Final = str.maketrans("", "", "+-(). ")
#: A number in scientific notation, as a spreadsheet shows a mobile (``1.38001E+10``).
_VALUE_LIKE: Final = re.compile(r"\d+(?:\.\d+)?[eE][+-]?\d+")
#: WeChat's openid and unionid: ``o`` then 27 letters, digits, ``-`` or ``_``.
_WECHAT_ID: Final = re.compile(r"o[0-9A-Za-z_-]{27}")


def _is_header(row: list[str]) -> bool:
    """Whether ``row`` names the type and value columns."""
    return (
        len(row) >= 2
        and row[0].strip().lower() in _HEADER[0]
        and row[1].strip().lower() in _HEADER[1]
    )


def _without_nul(lines: Iterator[str], path: Path | str) -> Iterator[str]:
    """The lines, or an error at the first holding a NUL: a UTF-16 file read as UTF-8 (its
    rows were read as NUL characters; csv on Python 3.10 refuses them, on 3.11 takes them)."""
    for number, line in enumerate(lines, 1):
        if "\x00" in line:
            if _UTF16.search(line):  # NUL beside every ASCII character: UTF-16 with no mark
                raise CommandError(
                    f"{path}:{number}: holds NUL characters: a UTF-16 file (Excel's Unicode Text)?"
                    " save it as UTF-8 (Excel: CSV UTF-8)"
                )
            # A NUL in a value (a database's export), zeros after the end (a crash's)
            raise CommandError(
                f"{path}:{number}: holds a NUL byte (at character {line.index(chr(0)) + 1}),"
                " which no identity holds: remove it"
            )
        yield line


#: Text read from UTF-16 as an 8-bit encoding: ASCII characters with a NUL between each.
_UTF16: Final = re.compile("[\x01-\x7f]\x00[\x01-\x7f]\x00")


class _Read(Iterator[str]):
    """The lines of ``lines``, and whether every one has been read (``ended``)."""

    def __init__(self, lines: Iterator[str]) -> None:
        self._lines = lines
        self.ended = False

    def __next__(self) -> str:
        try:
            return next(self._lines)
        except StopIteration:
            self.ended = True
            raise


def _csv_rows(reader: Any, path: Path | str, read: _Read) -> Iterator[list[str]]:
    """The reader's rows (of the lines ``read``); a file it cannot read as CSV is an error
    naming the line."""
    start = 1  # the line the next row starts on
    try:
        for row in reader:
            if read.ended and any("\n" in cell or "\r" in cell for cell in row):
                # A row ends at its last line's end, before the next is read, but for a quote
                # still open at the end of the file, which csv closes there: every line after
                # it taken into its cell (a remark's: those rows never looked up, exit 0).
                raise CommandError(
                    f"{path}:{start}: a quote opened on this line is not closed (its value runs"
                    " to the end of the file): close it, or quote no value"
                )
            yield row
            start = reader.line_num + 1
    except csv.Error as err:  # a field past csv's limit (a lone CR ends a line: _files)
        if reader.line_num > start:
            # Only a quote spans lines: one never closed (wechat,"o2) took every line after it
            # into its value until csv's limit, and the line named was that far one (13,110 of
            # 20,000), thousands of good rows past the one to mend.
            raise CommandError(
                f"{path}:{start}: a quote opened on this line is not closed (its value runs"
                f" to line {reader.line_num:,}, past csv's limit): close it, or quote no value"
            ) from None
        raise CommandError(
            f"{path}:{max(1, reader.line_num)}: not a CSV line ({err}): save the file as CSV UTF-8"
        ) from None


def _check_lookup(args: argparse.Namespace) -> tuple[str, str]:
    """The output's checks, before the input is read; the input's encoding, the output's
    format (``csv``, or ``jsonl`` when ``--format`` or a ``.jsonl``/``.ndjson`` name says so)."""
    given = Path(args.infile)
    try:
        if args.infile != STDIN and not given.exists():
            raise CommandError(no_such_file("--in", args.infile))
        a_directory = given.is_dir()
        if not a_directory and args.infile != STDIN and given.is_file():
            with given.open("rb"):  # a file it may not read (its mode): said here, named
                pass
    except OSError as err:  # under a directory it may not enter, a name too long: named as
        # --id-list's (this look's, or the read's, raised "locked/in.csv: Permission denied")
        raise CommandError(f"--in {args.infile}: cannot read it: {err.strerror or err}") from None
    if a_directory:
        raise CommandError(f"--in {args.infile} is a directory: give a CSV file")
    out = Path(args.out)
    fmt = args.format
    if fmt is None and args.out != STDOUT:
        suffix = out.suffix.lower()
        if suffix in FORMAT_OF_SUFFIX:  # .jsonl and .ndjson: JSON lines, as an export's
            fmt = FORMAT_OF_SUFFIX[suffix]
        elif suffix in _NEITHER:
            # CSV rows under a JSON (or workbook) name, exit 0: the next program that read it
            # as its name says failed on the header.
            raise UsageError(
                f"--out {args.out}: lookup writes CSV or JSON lines, not {_NEITHER[suffix]}:"
                f" name it {out.with_suffix('.csv')} or {out.with_suffix('.jsonl')} (JSON"
                " lines), or give --format csv|jsonl"
            )
    check_output(args.out, force=args.force, inputs=[args.infile], beside=REPLACED_BESIDE)
    return _encoding(args), fmt or "csv"


#: The names of an output in another format than the CSV or JSON lines a lookup writes.
_NEITHER: Final = MappingProxyType(
    {
        ".json": "JSON",
        ".xlsx": "a workbook",
        ".xls": "a workbook",
    }
)


def _count_rows(
    infile: Path,
    name: str,
    encoding: str,
    out: str,
    note: Callable[[int], None] | None = None,
) -> tuple[int, str]:
    """The input's number of rows (every row checked before a request), and the output's
    encoding; ``note``: told the rows checked so far, after each (progress)."""
    # Blocking (2,000,000 rows: 7 s): the loop would see a signal only once the file was read.
    with interruptible():
        total = counted_noting(_identities(infile, encoding, name), note)
    # Excel's "CSV UTF-8" starts with a mark, and Excel reads a file without it as the local
    # code page: the result, double-clicked, showed its Chinese values as mojibake.
    out_encoding = encoding
    if encoding == "utf-8" and out != STDOUT:
        with infile.open("rb") as fh:
            if fh.read(len(codecs.BOM_UTF8)) == codecs.BOM_UTF8:
                out_encoding = "utf-8-sig"
    return total, out_encoding


#: The answers of a service down or of a gateway before it (Bad Gateway, Service Unavailable,
#: Gateway Timeout): a lookup that ends on one is no row's failure. A 500 may be the row's.
_UNAVAILABLE: Final = frozenset({502, 503, 504})


async def _lookup(args: argparse.Namespace) -> int:
    encoding, fmt = _check_lookup(args)
    remove_left_behind(args.out)  # the temporary files of lookups killed outright
    # Standard input or a pipe: copied first, as the rows are read twice. Said as it runs
    # (its producer's time, and 4.4 s a million rows, went without a line).
    copied = f"lines of --in {shown(args.infile)} copied to a temporary file"
    with read_twice(args.infile, lambda: reading(copied, quiet=args.quiet)) as (infile, name):
        return await _lookup_rows(args, infile, name, encoding, fmt)


def _identity_masked(err: APIError, value: str) -> str:
    """``err``'s line with ``value``, the identity its lookup was for, masked in the service's
    words and what follows them alone: masked in the whole line, a value of 4 or 5 digits (a
    member number) masked the error code too ("error_code ***0"), and runs of a longer one
    the path ("/v1/***identities" for customer@example.com)."""
    said = without_method(str(err))
    words = printable(err.description)[:40] if err.description else ""  # kept cut past 1,000
    at = said.find(f": {words}") if words else -1
    if at < 0:  # no words of the service's where they are said: all of it, as it may quote it
        return redact(said, [value])
    return said[:at] + redact(said[at:], [value])


async def _lookup_rows(
    args: argparse.Namespace, infile: Path, name: str, encoding: str, fmt: str
) -> int:
    checked = f"rows of --in {shown(args.infile)} checked"
    with reading(checked, quiet=args.quiet) as note:
        total, out_encoding = _count_rows(infile, name, encoding, args.out, note)
    if fmt == "jsonl":
        out_encoding = "utf-8"  # JSON is UTF-8 (RFC 8259), whatever the input's encoding
    if not total:
        # Exit 0 and a file of its header: `--in <(a query that failed)` looked like a run that
        # found no one. Refused as an --id-list of no id is (the README's table: a file, 1).
        raise CommandError(
            f"--in {args.infile}: holds no identity (type,value rows; a header alone is none)"
        )
    progress = None if args.quiet else ProgressLines(what="identities", checked=False)
    if progress is not None:
        # Known before any answer, for the ticker to say: lines came only with answers, so a
        # slow service (or token) showed nothing until the first, a CI job's silent step.
        progress.update(0, total)
    found = missing = 0
    # The line and value of each identity taken and not yet answered: answers come in input
    # order, so the first is the lookup that fails.
    lines: deque[tuple[int, str]] = deque()

    def taken() -> Iterator[Identity]:
        for line, identity in _numbered_identities(infile, encoding, name):
            lines.append((line, identity.value))
            yield identity

    async with open_client(args, args.concurrency) as dm, ticking(progress):
        with replace_on_success(args.out, out_encoding, force=args.force) as out:
            write = _lookup_writer(out, fmt)
            try:
                async for identity, customer_id in dm.identities.lookup_iter(
                    taken(), concurrency=args.concurrency
                ):
                    lines.popleft()
                    write(identity, customer_id)
                    if customer_id is None:
                        missing += 1
                    else:
                        found += 1
                    if progress is not None:
                        progress.update(found + missing, total)
            except APIError as err:
                # The service's words may quote the identity it was asked for: personal data
                # (a mobile, an openid), masked as a secret is, wherever the line is said.
                said = _identity_masked(err, lines[0][1]) if lines else without_method(str(err))
                if isinstance(err, RateLimitError):
                    # The app's, not the line's: any row would have met it, and the advice to
                    # check or remove the line had a good row dropped.
                    cap = dm.retry_policy.retry_after_cap
                    if err.retry_after is not None and err.retry_after > cap:
                        # Raised at once, not retried: more --max-retries met it again at once.
                        raise CommandError(
                            f"{said}: the service's rate limit asked for a"
                            f" wait longer than the {cap:g} s a retry waits: run it again once"
                            " that time has passed, with a lower --concurrency"
                        ) from None
                    raise CommandError(
                        f"{said}: the service's rate limit outlasted the"
                        " retries: run it again with a lower --concurrency or more --max-retries"
                    ) from None
                if isinstance(err, ServerError) and err.status in _UNAVAILABLE:
                    # The service down or a gateway's failure, which no row causes.
                    raise CommandError(
                        f"{said}: the service's, not a row's (it was"
                        " unavailable): run it again later"
                    ) from None
                if isinstance(err, AuthenticationError) or not lines:
                    raise  # the app's, not the line's: explain() says what to do
                # The line, not its value: an identity is personal data (a mobile, an openid).
                raise CommandError(
                    f"{name}:{lines[0][0]}: its lookup failed: {said}; "
                    "run it again, and if that line fails again, check or remove it"
                ) from None
    where = "standard output" if args.out == STDOUT else args.out
    data = {"path": args.out, "resolved": found + missing, "found": found, "not_found": missing}
    resolved = counted(found + missing, "identity", "identities")
    text = f"resolved {resolved}: {found:,} found, {missing:,} not found -> " + shown(where)
    print_report(data, text, style=args.report, quiet=args.quiet, out=_report_stream(args))
    return EXIT_OK


def _lookup_writer(out: TextIO, fmt: str) -> Callable[[Identity, int | None], None]:
    """What writes a lookup's answer to ``out`` as a row: CSV ``type,value,customer_id``
    (the first after its header; an empty cell for no customer), or a JSON line ``{"type": ...,
    "value": ..., "customer_id": 123 or null}``."""
    if fmt == "jsonl":
        dumps = json.JSONEncoder(ensure_ascii=False).encode

        def write_line(identity: Identity, customer_id: int | None) -> None:
            row = {"type": identity.type, "value": identity.value, "customer_id": customer_id}
            out.write(dumps(row) + "\n")

        return write_line
    writer = csv.writer(out, lineterminator="\r\n")
    # With the first row, not before the first request: a lookup to standard output that
    # failed then (a wrong secret) left `> found.csv` holding the header, a result of no row.
    header = [["type", "value", "customer_id"]]

    def write_row(identity: Identity, customer_id: int | None) -> None:
        if header:
            writer.writerow(header.pop())
        writer.writerow([identity.type, identity.value, "" if customer_id is None else customer_id])

    return write_row


async def _simulate(args: argparse.Namespace) -> int:
    # Blocking, as the seeding is (aiohttp's server, the simulator): on the loop, whose handlers
    # only note a signal for it, Ctrl-C stopped the command once the seeding had ended too.
    with interruptible():
        from ..testing import serve_forever

    try:
        await serve_forever(
            port=args.port,
            customers=args.customers,
            latency_ms=args.latency_ms,
            fault_rate=args.fault_rate,
            seed=args.seed,
            report=args.report,
            quiet=args.quiet,
            # Blocking (7 s at 20 million customers): the loop saw Ctrl-C only once it ended.
            seeding=interruptible,
            out=standard_output(),
        )
    except BrokenPipeError:
        raise  # the reader of its settings went away (`| head -1`): exit 141, not --port's
    except OSError as err:
        if err.errno == errno.EADDRINUSE:  # asyncio's "error while attempting to bind on ..."
            raise CommandError(
                f"--port {args.port} is in use (another program listens there): give another"
                " port, or --port 0 for a free one (the settings printed name it)"
            ) from None
        raise CommandError(f"--port {args.port}: {err.strerror or err}") from None
    return EXIT_OK


async def _demo(args: argparse.Namespace) -> int:
    with interruptible():  # blocking, as the seeding is: see _simulate
        from ..testing import DMHubSimulator

    # The default file is the demo's own: running the README's first command twice in one
    # directory replaced it, where an --out of the user's choosing still needs --force.
    # A file another run put at an --out of the user's while the demo ran is kept without
    # --force, as an export keeps it: it was replaced, exit 0.
    overwrite = args.force or args.out is None
    if args.out is None:
        args.out = DEMO_OUT
        check_output(args.out, force=True, stdout=False)
    else:
        check_output(args.out, force=args.force, stdout=False)
        _check_export_name(args.out, None, format_flag=False)
    latency = args.latency_ms
    # The banner is for people: with --report json, stdout holds the one JSON object only.
    shows = not args.quiet and args.report == "text"
    stdout = standard_output()  # a failed write named, not a bare "No space left on device"

    def say(line: str) -> None:
        if shows:
            print(line, file=stdout, flush=True)

    say(f"seeding an in-process DM Hub simulator with {counted(args.customers, 'customer')} ...")
    started = time.monotonic()
    with interruptible():  # blocking: the loop would see a signal only once it had ended
        sim = DMHubSimulator(customers=args.customers)
        # Each seeded customer was decoded at its first read, by the export's walk, on this
        # process's CPU: 0.27 s of the export's 0.49 s CPU for 20,000, none of it the SDK's nor
        # any service's cost to a client. Decoded here, as seeding (the simulator keeps 50,000).
        for customer_id in sim.customer_ids()[:50_000]:
            sim.store.get(customer_id)
    async with sim:
        sim.faults.latency = latency / 1000.0
        delay = (
            f"every answer is delayed {latency:g} ms to imitate a network"
            if latency > 0  # "delayed 0 ms to imitate a network" imitated none
            else "answers are not delayed: loopback speed"
        )
        say(
            f"simulator at {sim.url} ready in {time.monotonic() - started:.1f}s; {delay} "
            "(--latency-ms to change it); the simulator shares this process's CPU, which slows "
            "the export too"
        )
        if latency > 0:
            ceiling = args.concurrency * 100 / (latency / 1000.0)
            say(
                f"at {latency:g} ms a page of 100 and --concurrency {args.concurrency}, no client "
                f"can beat {ceiling:,.0f} customers/s; exporting ..."
            )
        bar, lines = _progress(args)
        async with (
            DMHubClient(
                sim.app_id, sim.secret, base_url=sim.url, max_concurrency=args.concurrency
            ) as dm,
            ticking(lines),
        ):
            try:
                report = await export_customers(
                    dm,
                    args.out,
                    concurrency=args.concurrency,
                    progress=bar,
                    on_progress=lines,
                    overwrite=overwrite,
                )
            except FileExistsError as err:
                if err.filename is None or not _same_place(err.filename, args.out):
                    raise
                raise appeared(args.out) from None
    return _finish(report, args, sys.stdout, verify_flag=False)


COMMANDS = {
    "export": _export,
    "lookup": _lookup,
    "simulate": _simulate,
    "demo": _demo,
    "worker": worker_command,
    "merge": merge_command,
}
