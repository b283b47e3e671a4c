"""What an export tells its caller: the report at the end, and progress after every page."""

from __future__ import annotations

from typing import Final

import attrs

from .._words import noun

__all__ = ["ExportProgress", "ExportReport"]


@attrs.define
class ExportReport:
    """What an export did. ``complete`` is true only when a check that could fail passed."""

    path: str
    format: str
    exported: int = 0
    duplicates: int = 0
    count_before: int | None = None
    count_after: int | None = None
    pages: int = 0
    #: Retries this run's requests took: its pages', its counts', a resume's start-page
    #: search's and the final check's (``client.stats.retries`` also counts a token fetch's).
    retries: int = 0
    seconds: float = 0.0
    resumed: bool = False
    #: The final check (an id-only walk of the service): True when every customer the service
    #: holds was found in the file, False when that could not be shown, None when it did not
    #: run because the counts and the walk showed no change (see ``docs/reliability.md``).
    verified: bool | None = None
    #: Customers the final check found missing and fetched by id (appended to the file).
    recovered: int = 0
    #: Customers the file already held when this run took it up from a checkpoint (0 unless
    #: ``resumed``): ``exported`` counts them, ``records_per_second`` does not.
    exported_before: int = 0

    @property
    def complete(self) -> bool:
        """Every customer the service holds is in the file, once.

        Shown by the final check when it ran; otherwise by the counts before and after, which
        must both equal the customers exported.
        """
        if self.verified is not None:
            return self.verified
        counts = (self.count_before, self.count_after)
        return all(c == self.exported for c in counts if c is not None)

    @property
    def records_per_second(self) -> float:
        """Throughput of this run: the customers it wrote (not those a resumed file already
        held, ``exported_before``) over its ``seconds``."""
        written = self.exported - self.exported_before
        return written / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """The report as a few readable lines."""
        lines = [
            f"exported      {self.exported} {noun(self.exported, 'customer')} to {self.path} "
            f"({self.format})",
            f"duplicates    {self.duplicates} repeated {noun(self.duplicates, 'id')} dropped",
            f"count         {self.count_before} before, {self.count_after} after",
            f"pages         {self.pages} ({self.retries} {noun(self.retries, 'retry', 'retries')})",
            f"time          {self.seconds:.1f}s ({self.records_per_second:,.0f} customers/s)",
        ]
        if self.resumed:
            lines.append(
                f"resumed       from a checkpoint ({self.exported_before} exported before)"
            )
        if self.verified:
            lines.append(
                f"verified      every customer the service holds is in the file "
                f"({self.recovered} found missing and fetched by id)"
            )
        elif self.verified is None and self.complete:
            # Said, not implied: as many sign-ups as deletes while it ran leave both counts
            # as they were and can shift customers past the walk (docs/reliability.md).
            lines.append(
                "checked       by the counts alone, which churn that balances (as many "
                'sign-ups as deletes during the export) leaves equal: verify="always"'
                f"{VERIFY_FLAG} checks every id"
            )
        if not self.complete:
            lines.append(
                "MISMATCH      the file could not be shown to hold every customer: customers "
                "kept changing during the export, or some were missed; run it again"
            )
        return "\n".join(lines)


#: The command line's flag in :meth:`ExportReport.summary`'s advice, which a command without
#: it (``dmhub-async demo``) leaves out of its report.
VERIFY_FLAG: Final = " (--verify always)"


@attrs.frozen
class ExportProgress:
    """A progress update, passed to ``on_progress`` after every page written (the final
    check's recovered customers included); ``total`` is the service's count, the latest once
    the final check runs."""

    exported: int
    total: int | None
    pages: int
    duplicates: int
