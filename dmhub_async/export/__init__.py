"""Bulk customer export: every customer (or a filtered set) to JSONL or CSV, exactly once.

::

    from dmhub_async import DMHubClient
    from dmhub_async.export import export_customers

    async with DMHubClient() as dm:
        report = await export_customers(dm, "customers.jsonl", checkpoint="customers.ckpt")
        print(report.summary())

The walk sorts by the immutable ``id`` and drops repeats (docs/contract.md, "Pagination
hazards"), holds at most ``concurrency`` pages in memory, and writes rows as the service sent
them. With a checkpoint file, progress is recorded after every page written, and a rerun after
a crash (SIGKILL included) checks the output against it, cuts it back to the last recorded row
and carries on from the last id written. Without one, rows go to a work file that replaces the
destination only when the export is done. ``report.complete`` comes from a check that can
fail: see :class:`ExportReport` and docs/reliability.md, "Resuming an export".

The pieces: ``_export`` (the walk), ``_output`` (the locked destination, its files),
``_checkpoint`` (the typed checkpoint), ``_writers`` (JSONL and CSV, written and read back),
``_reconcile`` (where a resume starts, the final check), ``_ids`` (the ids written),
``_owner`` (whose customers a resumed output holds, for a client given an access token).
"""

from ._export import export_customers
from ._report import ExportProgress, ExportReport

__all__ = ["ExportProgress", "ExportReport", "export_customers"]
