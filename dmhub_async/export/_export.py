"""Bulk customer export: every customer (or a filtered set) to JSONL or CSV, exactly once.

::

    from dmhub_async import DMHubClient
    from dmhub_async.export import export_customers

    async with DMHubClient() as dm:
        report = await export_customers(dm, "customers.jsonl", checkpoint="customers.ckpt")
        print(report.summary())

The walk sorts by the immutable ``id`` and drops repeats (CONTRACT.md, "Pagination hazards"),
holds at most ``concurrency`` pages in memory, and writes rows as the service sent them.
With a checkpoint file, progress is recorded after every page written, and a rerun after a
crash (SIGKILL included) cuts the output back to the last recorded row and carries on. Without
one, rows go to a temporary file that is moved into place only when the export succeeds.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import attrs
from typing_extensions import Unpack

from ._converter import wire_names
from ._exceptions import InvalidRequestError
from ._json import dumps_line
from .models.customer import Customer
from .resources.customers import CustomerFilters, customer_filter_params

if TYPE_CHECKING:
    from ._client import DMHubClient

__all__ = ["ExportProgress", "ExportReport", "export_customers"]

Format = Literal["jsonl", "csv"]
CHECKPOINT_VERSION = 1
#: CSV columns: every wire field of the model except the nested ones, in model order.
CSV_FIELDS: tuple[str, ...] = tuple(
    wire for name, wire in wire_names(Customer).items() if name not in ("attr", "extra")
)


@attrs.define
class ExportReport:
    """What an export did. ``complete`` is true when nothing suggests a missing record."""

    path: str
    format: str
    exported: int = 0
    duplicates: int = 0
    count_before: int | None = None
    count_after: int | None = None
    pages: int = 0
    retries: int = 0
    seconds: float = 0.0
    resumed: bool = False

    @property
    def complete(self) -> bool:
        """The file holds as many customers as the service counts now (or counted before)."""
        counts = [c for c in (self.count_before, self.count_after) if c is not None]
        return not counts or self.exported in counts

    @property
    def records_per_second(self) -> float:
        """Throughput of this run."""
        return self.exported / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """The report as a few readable lines."""
        lines = [
            f"exported      {self.exported} customers to {self.path} ({self.format})",
            f"duplicates    {self.duplicates} repeated ids dropped",
            f"count         {self.count_before} before, {self.count_after} after",
            f"pages         {self.pages} ({self.retries} retries)",
            f"time          {self.seconds:.1f}s ({self.records_per_second:,.0f} customers/s)",
        ]
        if self.resumed:
            lines.append("resumed       from a checkpoint")
        if not self.complete:
            lines.append(
                "MISMATCH      the exported count differs from the service's count: customers "
                "were added or deleted during the export, or some were missed; run it again"
            )
        return "\n".join(lines)


@attrs.frozen
class ExportProgress:
    """A progress update, passed to ``on_progress`` after every page written."""

    exported: int
    total: int | None
    pages: int
    duplicates: int


class _JsonlWriter:
    """One customer a line, wire field names, UTF-8 with Chinese as is."""

    def __init__(self, fh: IO[bytes]) -> None:
        self._fh = fh

    def header(self) -> list[str] | None:
        return None

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        self._fh.write(b"".join(map(dumps_line, rows)))


class _CsvWriter:
    """A header of every field, ``attr.*`` flattened to columns, RFC 4180 quoting.

    The ``attr`` keys are taken from the first page (a stream cannot grow its header later);
    keys first seen after it go to the ``attr`` column as JSON, and fields the model does not
    know to ``extra``, so nothing is lost.
    """

    def __init__(self, fh: IO[bytes], header: list[str] | None) -> None:
        self._fh = fh
        self._header = header
        self._attr_keys: list[str] = []
        if header is not None:
            self._attr_keys = [c[5:] for c in header if c.startswith("attr.")]

    def header(self) -> list[str] | None:
        return self._header

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\r\n")
        if self._header is None:
            keys = sorted({k for row in rows for k in (row.get("attr") or {})})
            self._attr_keys = keys
            self._header = [*CSV_FIELDS, *(f"attr.{k}" for k in keys), "attr", "extra"]
            writer.writerow(self._header)
        known = set(CSV_FIELDS) | {"attr"}
        attr_keys = self._attr_keys
        for row in rows:
            attr = dict(row.get("attr") or {})
            cells = [_cell(row.get(f)) for f in CSV_FIELDS]
            cells += [_cell(attr.pop(k, None)) for k in attr_keys]
            extra = {k: v for k, v in row.items() if k not in known}
            cells.append(json.dumps(attr, ensure_ascii=False) if attr else "")
            cells.append(json.dumps(extra, ensure_ascii=False) if extra else "")
            writer.writerow(cells)
        self._fh.write(buf.getvalue().encode("utf-8"))


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _format_of(dest: Path, format: str | None) -> Format:
    if format is None:
        format = "csv" if dest.suffix.lower() == ".csv" else "jsonl"
    if format not in ("jsonl", "csv"):
        raise InvalidRequestError(f"format must be 'jsonl' or 'csv', not {format!r}")
    return "csv" if format == "csv" else "jsonl"


def _fingerprint(dest: Path, format: str, params: dict[str, str]) -> str:
    text = json.dumps([str(dest.resolve()), format, sorted(params.items())])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(state), encoding="utf-8")
    os.replace(tmp, path)  # atomic: a kill leaves the old checkpoint or the new, never half


def _read_checkpoint(path: Path, fingerprint: str) -> dict[str, Any] | None:
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError:
        raise InvalidRequestError(f"checkpoint {str(path)!r} is not a checkpoint file") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION:
        raise InvalidRequestError(f"checkpoint {str(path)!r} is not a checkpoint file")
    if state.get("fingerprint") != fingerprint:
        raise InvalidRequestError(
            f"checkpoint {str(path)!r} belongs to another export (other file, format or "
            "filters): delete it to start over"
        )
    return state


async def export_customers(
    client: DMHubClient,
    dest: str | os.PathLike[str],
    *,
    format: Format | None = None,
    page_size: int = 100,
    concurrency: int = 8,
    progress: bool = True,
    checkpoint: str | os.PathLike[str] | None = None,
    on_progress: Callable[[ExportProgress], None] | None = None,
    **filters: Unpack[CustomerFilters],
) -> ExportReport:
    """Export the customers that match ``filters`` to ``dest``, each exactly once.

    Args:
        client: an open :class:`DMHubClient`.
        dest: the output file; its extension picks the format unless ``format`` is given.
        format: ``"jsonl"`` or ``"csv"``.
        page_size: rows a request (the service serves at most 100); a resumed export keeps
            the size it began with.
        concurrency: pages fetched at once.
        progress: show a progress bar (tqdm) when stderr is a terminal.
        checkpoint: a file recording progress after every page: rerun the same call to resume.
        on_progress: called with an :class:`ExportProgress` after every page written.
        **filters: the filters of :meth:`Customers.list` (``sort_by``/``sort_order`` excepted:
            the export walks by id, which is what makes it exact and resumable).

    Raises:
        InvalidRequestError: a bad filter, format, or a checkpoint of another export.
        OSError: the output cannot be written.
    """
    started = time.monotonic()
    if "sort_by" in filters or "sort_order" in filters:
        raise InvalidRequestError("export_customers() walks by id: sort_by/sort_order not allowed")
    dest = Path(dest)
    fmt = _format_of(dest, format)
    params = customer_filter_params("export_customers", dict(filters))
    # Fails early on an unwritable output or checkpoint, before any request: a failure after
    # the walk would lose it all, and one after the first page would leave dest cut short.
    ckpt_path = Path(checkpoint) if checkpoint is not None else None
    if dest.is_dir():
        raise InvalidRequestError(f"{str(dest)!r} is a directory, not a file")
    for where in (dest, ckpt_path):
        if where is not None and (
            not where.parent.is_dir() or not os.access(where.parent, os.W_OK)
        ):
            raise InvalidRequestError(f"cannot write to {str(where.parent)!r}")

    fingerprint = _fingerprint(dest, fmt, params)
    state = _read_checkpoint(ckpt_path, fingerprint) if ckpt_path is not None else None
    report = ExportReport(path=str(dest), format=fmt, resumed=state is not None)
    if state is not None:
        # next_page counts pages of the size the walk began with: another size would start
        # at another offset and skip (or repeat) records.
        page_size = int(state.get("page_size", page_size))

    # Built (and so checked: page_size, concurrency) before any request or file is touched.
    paginator = client.customers.list_rows(
        page_size=page_size,
        concurrency=concurrency,
        start_page=int(state["next_page"]) if state else 1,
        resume_after=state.get("last_id") if state else None,
        **filters,
    )
    report.count_before = await client.customers.count(**filters)
    if state is not None:
        report.count_before = state.get("count_before", report.count_before)

    # With a checkpoint, write in place (so a rerun can cut back and continue); without, to a
    # temporary file that replaces dest only on success.
    work = dest if ckpt_path is not None else dest.with_name(f".{dest.name}.{os.getpid()}.part")
    fh = _open_output(work, state)
    if state is not None:
        report.exported = int(state["exported"])
        report.duplicates = int(state["duplicates"])
    header = state.get("header") if state else None
    writer = _CsvWriter(fh, header) if fmt == "csv" else _JsonlWriter(fh)

    bar = _progress_bar(progress, report.count_before, report.exported)
    ok = False
    try:
        last_id = state.get("last_id") if state else None
        # aclosing: on an error here the pages in flight are cancelled now, not when the
        # abandoned generator is collected.
        async with contextlib.aclosing(paginator.pages()) as pages:
            async for page in pages:
                if page.items:
                    writer.write(page.items)
                    last_id = page.items[-1].get("id", last_id)
                fh.flush()
                report.exported += len(page.items)
                report.pages += 1
                report.duplicates = (int(state["duplicates"]) if state else 0) + (
                    paginator.stats.duplicates
                )
                if ckpt_path is not None:
                    _write_checkpoint(
                        ckpt_path,
                        {
                            "version": CHECKPOINT_VERSION,
                            "fingerprint": fingerprint,
                            "next_page": page.number + 1,
                            "page_size": page_size,
                            "last_id": last_id,
                            "bytes": fh.tell(),
                            "exported": report.exported,
                            "duplicates": report.duplicates,
                            "header": writer.header(),
                            "count_before": report.count_before,
                        },
                    )
                if bar is not None:
                    bar.update(len(page.items))
                if on_progress is not None:
                    on_progress(
                        ExportProgress(
                            report.exported, report.count_before, report.pages, report.duplicates
                        )
                    )
        if fmt == "csv" and writer.header() is None:
            writer.write([])  # an empty export still gets its header
        ok = True
    finally:
        fh.close()
        if bar is not None:
            bar.close()
        if not ok and ckpt_path is None:
            work.unlink(missing_ok=True)
    if ckpt_path is None:
        os.replace(work, dest)
    report.retries = paginator.stats.retries
    report.count_after = await client.customers.count(**filters)
    if ckpt_path is not None:
        ckpt_path.unlink(missing_ok=True)  # done: a rerun starts a new export
    report.seconds = time.monotonic() - started
    return report


def _open_output(work: Path, state: dict[str, Any] | None) -> IO[bytes]:
    """The output, new, or cut back to the last checkpointed row when resuming.

    Writes are a page at a time into the OS cache: quick enough to do on the loop.
    """
    if state is None:
        return open(work, "wb")
    fh = open(work, "r+b")  # noqa: SIM115
    fh.truncate(int(state["bytes"]))  # drop anything written after the last checkpoint
    fh.seek(0, os.SEEK_END)
    return fh


def _progress_bar(enabled: bool, total: int | None, initial: int) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    # disable=None: a bar on a terminal, nothing in a log file or CI.
    return tqdm(
        total=total, initial=initial, unit=" customers", unit_scale=True, disable=None, leave=True
    )
