"""``export_customers``: the walk by id, page by page into the output, then the final check."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import IO, Any, Final, Literal, Protocol, cast

import attrs
from typing_extensions import Unpack

from .._auth import normalise_base_url
from .._client import DMHubClient, check_client
from .._exceptions import DMHubError, InvalidRequestError
from .._pagination import AsyncPaginator
from .._retry import RETRY_TALLY, RetryTally
from .._threads import file_work, on_thread
from .._validate import check_flag, short
from ..resources._batches import check_export_room, walked_ids
from ..resources._filters import checked_ids, read_once
from ..resources.customers import CustomerFilters, customer_filter_params, long_id_list
from ._checkpoint import Checkpoint, ExportScope, id_list_digest, recorded_scope
from ._ids import IdSet
from ._output import REPLACED_BESIDE, Output, check_path, open_output
from ._owner import check_owner
from ._reconcile import Retries, final_check, start_page
from ._report import ExportProgress, ExportReport
from ._writers import Format, Writer, new_writer

__all__ = ["Verify", "check_verify", "export_customers", "retries_of"]

Verify = Literal["auto", "always"]
Encoding = Literal["utf-8", "utf-8-sig"]


class BinaryStream(Protocol):
    """What an export to a stream uses of it: ``write`` and ``flush`` (a ``gzip.GzipFile``,
    which is no ``IO[bytes]`` to a type checker, as ``sys.stdout.buffer`` or a ``BytesIO``)."""

    def write(self, data: bytes, /) -> object: ...

    def flush(self) -> object: ...


async def export_customers(
    client: DMHubClient,
    dest: str | os.PathLike[str] | IO[bytes] | BinaryStream,
    *,
    format: Format | None = None,
    page_size: int = 100,
    concurrency: int = 8,
    progress: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
    on_progress: Callable[[ExportProgress], None] | None = None,
    verify: Verify = "auto",
    encoding: Encoding = "utf-8",
    overwrite: bool = True,
    **filters: Unpack[CustomerFilters],
) -> ExportReport:
    """Export the customers that match ``filters`` to ``dest``, each exactly once.

    Args:
        client: an open :class:`DMHubClient`.
        dest: the output file (its extension picks the format unless ``format`` is given:
            ``.csv`` CSV, else JSON lines; ``.json`` is refused without ``format``):
            without a checkpoint, replaced only when the export is done; with one, written in
            place. Or a writable binary stream (such as ``sys.stdout.buffer``), written as rows
            come and not resumable: on a thread, one write at a time and in order, so a pipe
            its reader drains slowly holds the export, not the event loop.
        format: ``"jsonl"`` or ``"csv"``.
        page_size: rows a request (the service serves at most 100); a resumed export keeps
            the size it began with.
        concurrency: pages fetched at once (up to twice as many are held, waiting for a slow one).
        progress: show a progress bar (tqdm) when stderr is a terminal.
        checkpoint: a file recording progress after every page: rerun the same call to resume.
            Removed when the export is complete; kept when it is not (MISMATCH), so that a
            rerun takes the file up and checks it against the service again.
        on_progress: called with an :class:`ExportProgress` after every page written, those
            of customers the final check recovers included (the bar covers them too).
        verify: when the final check (an id-only walk, see :class:`ExportReport`) runs:
            ``"auto"`` when the export was resumed or anything suggests customers changed
            during it, ``"always"`` after every export.
        encoding: ``"utf-8"``, or for CSV ``"utf-8-sig"`` (a byte order mark first, which
            Excel needs to read UTF-8).
        overwrite: ``False``: a file at ``dest`` is kept, and ``FileExistsError`` naming it
            raised: before any request for one there as the export begins (but the output a
            checkpoint resumes, written in place); for one another program put there while the
            export ran, as the export puts its own there (at its end; with a checkpoint, at
            the first), the export's rows removed.
        **filters: the filters of :meth:`Customers.list` (``sort_by``/``sort_order`` excepted:
            the export walks by id, which is what makes it exact and resumable). With
            ``select``, a CSV has only the selected columns (``id`` first).

    Raises:
        InvalidRequestError: a bad filter, format or destination (a directory, a link, a
            FIFO, a device), a checkpoint of another export or an output that does not
            match it (of a client given an access token: none of the customers it holds
            that are looked up is one the token reaches, as written), or the destination in
            use by another export.
        OSError: the output cannot be written.
        ResponseDecodeError: a page the service sent cannot be written (text UTF-8 cannot
            hold, a lone surrogate), or read; the pages before it are kept.
    """
    check_client("export_customers", client)
    # Every retry of the export's requests, counted as it happens: a failed export has no
    # report, and the error it raises carries them (retries_of), so that a sharded export's
    # total counts those of a shard that failed.
    tally = RetryTally()
    kept = RETRY_TALLY.set(tally)
    chosen = dict(filters)
    read_once(chosen)  # a generator: read here, once, not by the checks and then the walk
    try:
        return await _export(
            client,
            dest,
            format,
            page_size,
            concurrency,
            progress,
            checkpoint,
            on_progress,
            verify,
            encoding,
            overwrite,
            chosen,
        )
    except (DMHubError, OSError) as err:
        err._dmhub_export_retries = tally.retries  # type: ignore[union-attr]
        raise
    finally:
        RETRY_TALLY.reset(kept)


async def _export(
    client: DMHubClient,
    dest: str | os.PathLike[str] | IO[bytes] | BinaryStream,
    format: Format | None,
    page_size: int,
    concurrency: int,
    progress: bool,
    checkpoint: str | os.PathLike[str] | None,
    on_progress: Callable[[ExportProgress], None] | None,
    verify: Verify,
    encoding: Encoding,
    overwrite: bool,
    filters: dict[str, Any],
) -> ExportReport:
    """export_customers(), its retries counted by the caller."""
    started = time.monotonic()
    check_flag("export_customers", "progress", progress)
    check_flag("export_customers", "overwrite", overwrite)
    check_verify(verify)
    target, fmt, scope, checkpoint_path, long_ids = await _plan(
        client, dest, format, encoding, checkpoint, dict(filters)
    )
    # A long id_list was checked by _plan: not again (25 ms for 300,000 ids on the event loop).
    checked = filters if long_ids is None else {**filters, "id_list": [0]}
    page_size, concurrency = check_run(
        client, page_size, concurrency, "on_progress", on_progress, **checked
    )
    if scope is not None and long_ids is not None:
        # The checkpoint records the ids as walked, as their digest (recorded_scope): sorted,
        # joined and hashed on a thread (300,000 held the event loop 100 ms and more).
        digest = await asyncio.to_thread(lambda: id_list_digest(walked_ids(long_ids)))
        scope = attrs.evolve(scope, filters={**scope.filters, "idList": digest})
    elif scope is not None:
        scope = recorded_scope(scope)  # a list of some 200 ids and more: its digest
    out = await open_output(target, checkpoint_path, scope, replace=overwrite)
    try:
        # The output as the caller named it (the target is absolute).
        if isinstance(dest, (str, os.PathLike)):
            label = str(Path(dest))
        else:
            label = str(getattr(dest, "name", "-"))
        writer = new_writer(
            fmt,
            out.found.header if out.found is not None else None,
            select=_columns(dict(filters)),
            bom=encoding == "utf-8-sig",
        )
        run = _Run(client, out, writer, label, fmt, scope, dict(filters), page_size, on_progress)
        report = await run.export(concurrency, progress=progress, verify=verify)
        # The final fsync of the whole file (72 ms for 200 MB; a stalled disk, for ever), or
        # the flush of the caller's stream (a full pipe), holds a thread, not the loop.
        complete = report.complete
        await on_thread(lambda: out.finish(complete))
    finally:
        # After a failure: the file cut back to what the checkpoint covers, closed, its lock
        # files removed; on a stalled filesystem, for as long. (A no-op after finish.)
        await on_thread(out.close)
    report.seconds = time.monotonic() - started
    return report


def check_verify(verify: object, where: str = "") -> None:
    """InvalidRequestError unless ``verify`` is ``"auto"`` or ``"always"`` (``where``: the
    function's name and ``: ``, said first)."""
    if verify not in ("auto", "always"):
        raise InvalidRequestError(f"{where}verify must be 'auto' or 'always', not {short(verify)}")


def retries_of(err: object) -> int | None:
    """The retries a failed export's requests took, carried by the error it raised; None
    when it carries none (not raised by ``export_customers``, or by an earlier release)."""
    retries = getattr(err, "_dmhub_export_retries", None)
    return retries if type(retries) is int else None


def check_run(
    client: DMHubClient,
    page_size: int,
    concurrency: int,
    callback_name: str,
    callback: object,
    *,
    callback_takes: int = 1,
    **filters: Any,
) -> tuple[int, int]:
    """The walk's settings and a progress callback (called with ``callback_takes``
    arguments), checked before any request or file; ``page_size`` and ``concurrency`` as the
    plain ints the walk reads them as (numpy's ``int64`` went into a checkpoint's JSON raw).

    A bad callback was a raw TypeError at the first progress, with pages already written; an
    async one, never awaited, was silent.
    """
    # Built, not walked: the walk checks page_size, concurrency and the filters as it is made.
    walk = client.customers.list_rows(page_size=page_size, concurrency=concurrency, **filters)
    if callback is not None and not callable(callback):
        raise InvalidRequestError(f"{callback_name} must be a function, not {short(callback)}")
    if callback is not None and not _takes(callback, callback_takes):
        # `lambda: ...`, or on_total(done) for on_total(done, planned): a raw TypeError at
        # the first progress, after the first page was written (a sharded export's plan made
        # and its parts begun).
        said = "one argument" if callback_takes == 1 else f"{callback_takes} arguments"
        raise InvalidRequestError(
            f"{callback_name} must take {said} (it is called with {said}), not {short(callback)}"
        )
    # Called after every page, never awaited: an async one made a coroutine that never ran
    # (a RuntimeWarning a page), and the export ended having told its caller nothing.
    if callback is not None and (
        inspect.iscoroutinefunction(callback)
        or inspect.iscoroutinefunction(type(callback).__call__)
    ):
        raise InvalidRequestError(
            f"{callback_name} must be a plain function (called after every page, not awaited),"
            f" not a coroutine function: {short(callback)}"
        )
    return walk.page_size, walk.concurrency


def _takes(callback: Callable[..., Any], count: int) -> bool:
    """Whether ``callback`` can be called with ``count`` positional arguments (True when its
    signature cannot be read: a builtin's, taken as it was)."""
    try:
        signature = inspect.signature(callback)
    except (TypeError, ValueError):
        return True
    try:
        signature.bind(*range(count))
    except TypeError:
        return False
    return True


async def _plan(
    client: DMHubClient,
    dest: str | os.PathLike[str] | IO[bytes] | BinaryStream,
    format: str | None,
    encoding: str,
    checkpoint: str | os.PathLike[str] | None,
    filters: dict[str, Any],
) -> tuple[Path | IO[bytes], Format, ExportScope | None, Path | None, list[Any] | None]:
    """The checked destination, format, scope and checkpoint path, and a long ``id_list``'s
    checked ids (the scope's ``idList`` then a stand-in to replace); nothing is sent or
    written.

    The paths are checked and resolved on a file thread (:func:`.file_work`), as every other
    touch of the export's files: on a stalled filesystem (an NFS server away) each of their 15
    ``stat`` calls waited on the event loop, every other coroutine of the service and every
    timeout with it, before the export had sent a request.
    """
    # None is "not given", as for every filter (and as list() takes it).
    if filters.get("sort_by") is not None or filters.get("sort_order") is not None:
        raise InvalidRequestError("export_customers() walks by id: sort_by/sort_order not allowed")
    long_ids = long_id_list(filters)
    # Warns (once per client) at the caller's line, in its own name: the walk's list() and
    # count() it runs next would have named themselves, at a line of this module. Four frames
    # up: _plan, _export, export_customers, its caller.
    params = client.customers._params("export_customers", filters, frames=4)
    if long_ids is not None:
        long_ids = checked_ids("export_customers", long_ids)
    # As its walks will send them (its sort, its final check's select=id), with room for an id.
    given = params.get("idList")
    longest = max(long_ids) if long_ids else max(map(int, given.split(","))) if given else None
    check_export_room("export_customers", params, longest_id=longest)
    if isinstance(dest, (str, os.PathLike)):
        named = Path(dest)
        check_output_name(named)
        # Fails early on an unwritable output, before any request (a failure after the walk
        # would lose it all), and before its name's format: a directory is said as one.
        output = await file_work(lambda: _checked_output(named))
    fmt = _format_of(Path(dest) if isinstance(dest, (str, os.PathLike)) else None, format)
    if encoding not in ("utf-8", "utf-8-sig") or (encoding != "utf-8" and fmt != "csv"):
        raise InvalidRequestError(
            f"encoding must be 'utf-8' (or 'utf-8-sig' for CSV), not {short(encoding)} for {fmt}"
        )
    if not isinstance(dest, (str, os.PathLike)):
        if (
            isinstance(dest, io.TextIOBase)
            or not callable(getattr(dest, "write", None))
            or not callable(getattr(dest, "flush", None))  # called at the end: BinaryStream
        ):
            raise InvalidRequestError(
                "dest must be a path or a binary stream (sys.stdout.buffer, not sys.stdout)"
            )
        _check_stream_writable(dest)
        if checkpoint is not None:
            raise InvalidRequestError("an export to a stream cannot be resumed: no checkpoint")
        # Only written and flushed (Output's stream path), as BinaryStream says.
        return cast("IO[bytes]", dest), fmt, None, None, long_ids
    path = output
    # The checkpoint too, before any request.
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise InvalidRequestError(f"checkpoint must be a path, not {type(checkpoint).__name__}")
    checkpoint_path = Path(checkpoint) if checkpoint is not None else None
    resolved, target, checkpoint_path = await file_work(lambda: _places(path, checkpoint_path))
    # One spelling of the service (as the token stores key it): HTTP://Host:443/ is https://host.
    base_url = normalise_base_url(client.base_url)
    scope = ExportScope(base_url, client.app_id, str(resolved), fmt, encoding, params)
    return target, fmt, scope, checkpoint_path, long_ids


def _check_stream_writable(dest: object) -> None:
    """A stream that says it is closed, or not open for writing, refused before any request:
    a file opened ``"rb"`` (a pipe's read end) was counted and walked, then failed at the first
    write with ``io.UnsupportedOperation``; a closed one with a raw ValueError. A stream that
    says neither (a ``gzip.GzipFile``'s ``writable()`` is its mode's) is taken as it is."""
    if getattr(dest, "closed", False) is True:
        raise InvalidRequestError("dest is a closed stream")
    writable = getattr(dest, "writable", None)
    if callable(writable):
        try:
            can_write = writable()
        except (OSError, ValueError):  # a stream that cannot tell: its first write will
            return
        if can_write is False:
            raise InvalidRequestError("dest is a stream not open for writing (opened 'rb'?)")


def _checked_output(path: Path) -> Path:
    """``path``, checked (a regular file or none yet, in a writable directory), made absolute.

    Absolute, now: a relative name was taken again in the working directory of the moment
    (another task's os.chdir mid-run), and the file went there, its lock files and a complete
    export's checkpoint left in the first.
    """
    check_path(path, "output")
    return Path(os.path.abspath(path))


def _places(path: Path, checkpoint: Path | None) -> tuple[Path, Path, Path | None]:
    """``path`` resolved (the scope's), and ``path`` and ``checkpoint`` made absolute, once
    ``checkpoint`` (if any) is checked: a regular file or none yet, in a writable directory,
    and not ``path`` itself."""
    resolved = path.resolve()
    if checkpoint is not None:
        check_path(checkpoint, "checkpoint", beside=REPLACED_BESIDE)
        if checkpoint.resolve() == resolved:
            raise InvalidRequestError("the checkpoint cannot be the output file")
    # Absolute, now, as the output (_checked_output).
    absolute = None if checkpoint is None else Path(os.path.abspath(checkpoint))
    return resolved, Path(os.path.abspath(path)), absolute


def _columns(filters: dict[str, Any]) -> list[str] | None:
    """The wire names of the selected fields (``id`` first), or None for every field."""
    # The select alone: the other filters are checked, and a long id_list joined, elsewhere.
    chosen = {"select": filters.get("select")}
    select = customer_filter_params("export_customers", chosen).get("select")
    if not select:
        return None
    # First, wherever it was named: a resume reads each record's id from the first column.
    return ["id", *(name for name in select.split(",") if name != "id")]


#: Suffixes of compressed files and compressed tarballs, lower case: the export writes none
#: of them.
_COMPRESSED: Final = frozenset(
    {".gz", ".tgz", ".z", ".bz2", ".tbz", ".tbz2", ".xz", ".txz", ".lzma", ".lz", ".lz4"}
    | {".zst", ".zstd", ".tzst", ".br", ".zip", ".7z", ".rar"}
)


#: Archives: the export writes no archive either.
_ARCHIVES: Final = frozenset({".tar"})
#: What a name may end in unseen, as the refusal names it.
_TRAILING: Final = {" ": "a space", "\n": "a line break", "\r": "a line break", "\t": "a tab"}


def check_output_name(dest: Path) -> None:
    """Refuse a destination named as what the export does not write, or ending unseen.

    A compressed file (``customers.jsonl.gz``) or a tar archive (``customers.tar``): the
    export writes plain text, and a file so named was written as plain JSONL, which
    ``gunzip``, ``tar`` and every reader of such files then refused. A name ending in white
    space (``"customers.csv "`` pasted with its space, ``--out "$(cat name)"`` with its
    newline): its extension is not ``.csv``, so it was written as JSONL, under a name that
    looked like the CSV's.
    """
    name = dest.name
    if name != name.rstrip():
        what = _TRAILING.get(name[-1], "white space")
        raise InvalidRequestError(
            f"{name!r} ends in {what}: give the name without it ({name.rstrip()!r})"
        )
    suffix = dest.suffix.lower()
    if suffix in _COMPRESSED:
        raise InvalidRequestError(
            f"{name} names a compressed file, and the export writes plain text: drop "
            f"{dest.suffix!r}, or compress the file it writes (gzip {dest.with_suffix('').name})"
        )
    if suffix in _ARCHIVES:
        raise InvalidRequestError(
            f"{name} names a tar archive, and the export writes plain text: drop "
            f"{dest.suffix!r}, or put the file it writes in one "
            f"(tar -cf {name} {dest.with_suffix('').name})"
        )


#: The extensions that name a format (any case): the export reads its format from them when
#: none is given, the CLI refuses an ``--out`` named by none, a merge one named by the other.
FORMAT_OF_SUFFIX: Final = MappingProxyType({".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"})


def _format_of(dest: Path | None, format: str | None) -> Format:
    """``format``, else the one ``dest``'s name says: ``.csv`` CSV, anything else JSON lines
    (the design's default), but ``.json``, refused.

    ``customers.json`` was written as JSON lines, which a JSON reader fails on at its second
    line. A name of no format of its own (``.txt``, none: a temporary file's) stays JSON lines,
    as 0.1.0 wrote it; the CLI's ``--out``, typed by a person, refuses those too.
    """
    if format is None and dest is not None:
        suffix = dest.suffix.lower()
        if suffix == ".json":
            stem = dest.stem
            raise InvalidRequestError(
                f"{dest.name}: a .json name says one JSON document, and the export writes JSON"
                f" lines or CSV: name it {stem}.jsonl or {stem}.csv, or give format='jsonl'|'csv'"
            )
        format = FORMAT_OF_SUFFIX.get(suffix, "jsonl")
    if format is None:  # a stream
        format = "jsonl"
    if format not in ("jsonl", "csv"):
        raise InvalidRequestError(f"format must be 'jsonl' or 'csv', not {short(format)}")
    return "csv" if format == "csv" else "jsonl"


class _Run:
    """One run of an export: a new one, or the rest of one a checkpoint recorded."""

    def __init__(
        self,
        client: DMHubClient,
        out: Output,
        writer: Writer,
        label: str,
        fmt: Format,
        scope: ExportScope | None,
        filters: dict[str, Any],
        page_size: int,
        on_progress: Callable[[ExportProgress], None] | None,
    ) -> None:
        self.client, self.out, self.scope, self.filters = client, out, scope, filters
        self.on_progress = on_progress
        resumed, found = out.resumed, out.found
        self.report = ExportReport(path=label, format=fmt, resumed=resumed is not None)
        # A page number means nothing at another size: a resume keeps the size it began with.
        self.page_size = resumed.page_size if resumed is not None else page_size
        self.earlier_duplicates = resumed.duplicates if resumed is not None else 0
        self.written = found.ids if found is not None else IdSet()
        self.last_id = found.last_id if found is not None else None
        self.report.exported = found.count if found is not None else 0
        self.report.exported_before = self.report.exported
        self.writer = writer
        self.total: int | None = None  # the count progress is shown against
        self.bar: Any = None

    async def export(self, concurrency: int, *, progress: bool, verify: Verify) -> ExportReport:
        """Walk, write, and check; the report (its ``seconds`` excepted)."""
        report, client, filters = self.report, self.client, self.filters
        retries = Retries()  # every request's, not the walk's alone: the client's tally agrees
        first = 1
        resumed = self.out.resumed
        if resumed is not None:
            # Its checkpoint records no app id (a client given an access token): another
            # app's token at the same base URL took the file up as its own.
            await check_owner(
                client,
                self.out.samples,
                f"output {report.path!r}",
                "export to a new file (with a new checkpoint), or delete both to start over",
                retries,
                more=lambda: on_thread(self.out.spread_samples),  # its file: waited for
            )
            first = await start_page(
                client, filters, self.page_size, resumed.next_page, self.last_id, retries
            )
            report.count_before = resumed.count_before
        else:
            report.count_before = await retries.count(client, filters)
        paginator = self._rows(concurrency=concurrency, start_page=first, resume_after=self.last_id)
        self.total = report.count_before
        # Open until the final check is done: the customers it recovers are written too.
        self.bar = _progress_bar(progress, self.total, report.exported)
        try:
            await self._walk(paginator)
            if self.writer.header is None and report.format == "csv":
                # An empty export still gets its header (a line: on the loop).
                header = self.writer.encode([])
                await on_thread(lambda: self.out.write(header))
            retries.taken += paginator.stats.retries
            report.count_after = await retries.count(client, filters)
            if verify == "always" or self._may_have_missed(paginator):
                self._aim_at(report.count_after)  # what the check makes the file hold
                report.verified, report.count_after = await final_check(
                    client,
                    filters,
                    self.written,
                    self._recover,
                    self._rows,
                    concurrency,
                    retries,
                    # As many a request as its pages hold: 100 customers whose attr is large
                    # were more than the client reads, where a smaller page size had passed.
                    fetch_size=self.page_size,
                )
        finally:
            if self.bar is not None:
                self.bar.close()
        report.retries = retries.taken
        return report

    async def _walk(self, paginator: AsyncPaginator[Any]) -> None:
        report = self.report
        # aclosing: on an error here the pages in flight are cancelled now, not when the
        # abandoned generator is collected.
        async with contextlib.aclosing(paginator.pages()) as pages:
            async for page in pages:
                report.pages += 1
                report.duplicates = self.earlier_duplicates + paginator.stats.duplicates
                await self._store(page.items, page.number + 1 if self.out.resumable else None)
                self._show(len(page.items))

    def _show(self, written: int) -> None:
        """Progress after ``written`` rows: the bar moved on, ``on_progress`` told."""
        if self.bar is not None:
            self.bar.update(written)
        if self.on_progress is not None:
            self.on_progress(self._progress())

    def _aim_at(self, total: int) -> None:
        """The count progress is shown against from now on (the final check's)."""
        self.total = total
        if self.bar is not None:
            self.bar.total = total
            self.bar.refresh()

    def _rows(
        self,
        *,
        page_size: int | None = None,
        concurrency: int = 1,
        start_page: int = 1,
        resume_after: Any = None,
        **more: Any,
    ) -> AsyncPaginator[Any]:
        """The walk of the rows to write, ``more`` filters added: as bytes for JSONL, which
        writes them as they came (``RawRow``), as dicts for CSV."""
        options = {
            "page_size": page_size or self.page_size,
            "start_page": start_page,
            "max_items": None,
            "concurrency": concurrency,
            "resume_after": resume_after,
        }
        filters = {**self.filters, **more}
        customers = self.client.customers
        if self.report.format == "jsonl":
            return customers._list_raw(filters, **options)
        return customers.list_rows(**options, **filters)

    def _progress(self) -> ExportProgress:
        report = self.report
        return ExportProgress(report.exported, self.total, report.pages, report.duplicates)

    def _take(self, rows: Sequence[Any]) -> bytes:
        """The bytes of ``rows``, their ids counted as written (:meth:`_store` writes them, on
        its thread)."""
        if not rows:
            return b""
        data = self.writer.encode(rows)
        for customer_id in map(self.writer.row_id, rows):
            if customer_id is not None:
                self.written.add(customer_id)
                self.last_id = customer_id
        self.report.exported += len(rows)
        return data

    async def _store(self, rows: Sequence[Any], next_page: int | None = None) -> None:
        """Encode ``rows`` (:meth:`_take`) and write them, then with ``next_page`` commit the
        checkpoint that points past them.

        On a thread: a commit's fsyncs took 0.65 ms a page on a quiet disk and 17 ms on a busy
        one, and a write can wait on the disk too, all of it on the event loop; a caller's
        stream whose reader is slow or stopped (``export - | slow_consumer``) held it for as
        long as its pipe stayed full. The encoding too: a CSV page of 100 customers whose
        ``attr`` held 200 KB each held the event loop 0.4-0.8 s (its JSON lines, 30-190 ms).
        Awaited before the next page is written: the checkpoint is never ahead of the synced
        data, and a stream gets one write at a time, in order (the writer, one page at a time).
        Cancelled, the write under way is waited for (:func:`on_thread`): nothing writes to the
        stream once the export has ended. (The CLI's standard output stops such a write when
        it is signalled: ``cli/_files._SignalledStdout``.)
        """
        if not rows and next_page is None:
            return
        out = self.out

        def store() -> None:
            data = self._take(rows)
            if data:
                out.write(data)
            if next_page is not None:
                out.commit(self._checkpoint(next_page))

        await on_thread(store)

    async def _recover(self, rows: Sequence[Any]) -> None:
        """Customers the final check found missing: appended (after the ordered walk), but
        those the file already holds.

        A service that answers more than the ``idList`` asked for (one that ignores it) had
        its every answer written: the customers the file held were written again, and the
        check, finding every id written, said the export complete.
        """
        row_id, written = self.writer.row_id, self.written
        fresh = [row for row in rows if row_id(row) not in written]
        self.report.duplicates += len(rows) - len(fresh)
        await self._store(fresh)
        self.report.recovered += len(fresh)
        self._show(len(fresh))

    def _may_have_missed(self, paginator: AsyncPaginator[Any]) -> bool:
        """Whether anything suggests customers changed while the export ran (or was down)."""
        report, stats = self.report, paginator.stats
        counts = {report.count_before, report.count_after, len(self.written)}
        changed = stats.refetches or stats.unverified or stats.duplicates
        return report.resumed or len(counts) > 1 or bool(changed)

    def _checkpoint(self, next_page: int) -> Checkpoint:
        assert self.scope is not None
        return Checkpoint(
            scope=self.scope,
            page_size=self.page_size,
            next_page=next_page,
            last_id=self.last_id,
            bytes=self.out.tell(),
            exported=self.report.exported,
            duplicates=self.report.duplicates,
            header=self.writer.header,
            count_before=self.report.count_before,
        )


def _progress_bar(enabled: bool, total: int | None, initial: int) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    # disable=None: a bar on a terminal, nothing in a log file or CI.
    return tqdm(
        total=total, initial=initial, unit=" customers", unit_scale=True, disable=None, leave=True
    )
