"""A sharded export whose shards a scheduler of the user's own runs (Celery, Airflow, k8s Jobs).

Three steps, each a task of that scheduler: :func:`plan_directory` plans the export into its
directory (``manifest.json``, as ``export_sharded`` writes it; a rerun takes up the plan already
there), each shard's task runs :func:`~dmhub_async.shards.export_shard` and returns
:func:`shard_result` (plain JSON-safe data, for any broker), and :func:`record_results` writes
the tasks' results into the manifest. The directory is then a sharded export like any other:
``late_check``, ``merge``, ``export --shards`` (or ``export_sharded``) to finish the shards
still to do, and a rerun of the plan, all work on it.

Without a manifest such a run had no late check, no merge, no verdict, and a planner that
crashed and planned again cut other windows, while the tasks of its first plan, redelivered
by an at-least-once broker, wrote their windows over the new plan's parts of the same names.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from typing_extensions import Unpack

from .._client import DMHubClient, check_client
from .._exceptions import InvalidRequestError
from .._threads import file_work
from .._validate import check_path_type, is_collection, short
from ..export import ExportReport
from ..export._export import Verify, check_verify
from ..resources._filters import check_filter_names
from ..resources.customers import CustomerFilters
from ._manifest import (
    MANIFEST_NAME,
    Manifest,
    ManifestWriter,
    ShardOutcome,
    _regular_file,
    part_digest,
)
from ._plan import Shard, warn_if_naive
from ._run import check_shards, coordinating, prepare, record_result, result_of

logger = logging.getLogger("dmhub_async")

__all__ = ["plan_directory", "record_results", "shard_result"]


async def plan_directory(
    client: DMHubClient,
    directory: str | os.PathLike[str],
    shards: int,
    *,
    format: str = "jsonl",
    verify: Verify = "auto",
    **filters: Unpack[CustomerFilters],
) -> Manifest:
    """Plan a sharded export into ``directory`` (its ``manifest.json``), or take up its plan.

    For a scheduler of your own: send a task for each shard of ``manifest.shards`` that is not
    ``complete`` (``outcome.shard.to_dict()``, its part ``directory / outcome.file``), each
    running :func:`~dmhub_async.shards.export_shard` and returning :func:`shard_result`; then
    :func:`record_results`. A rerun with the same settings (a planner that crashed) takes up
    the plan the directory holds, each shard its window, part and checkpoint, as
    ``export_sharded`` does; one with other settings is refused.

    Args:
        client: an open client.
        directory: the export's directory, made if missing: storage every task can write.
        shards, format, filters: as for ``export_sharded``.
        verify: recorded in the manifest as ``export_sharded`` records it (``"always"``, once
            asked, is kept by every later plan and rerun of the directory): give each task's
            ``export_shard`` the manifest's ``verify``.

    Returns:
        The directory's manifest, as written.
    """
    check_client("plan_directory", client)
    check_filter_names("plan_directory", filters)
    check_path_type("plan_directory", "directory", directory)
    check_verify(verify, "plan_directory(): ")
    check_shards(shards, "plan_directory")
    warn_if_naive(client, "plan_directory", filters)
    return await prepare(
        client,
        directory,
        shards,
        format=format,
        verify=verify,
        caller="plan_directory",
        **filters,
    )


async def shard_result(shard: Shard, report: ExportReport) -> dict[str, Any]:
    """What a shard's task returns: ``report`` (of ``export_shard(client, shard, ...)``) as
    plain JSON-safe data, with the part's size and SHA-256 (read on a thread) and the shard it
    is of, for :func:`record_results`."""
    if not isinstance(shard, Shard):
        raise InvalidRequestError(f"shard_result(): expected a Shard, not {short(shard)}")
    if not isinstance(report, ExportReport):
        raise InvalidRequestError(f"shard_result(): expected an ExportReport, not {short(report)}")
    return {**await result_of(report), "shard": shard.without_ids().to_dict()}


#: The keys of a :func:`shard_result` that :func:`record_results` reads.
_RESULT_KEYS = ("complete", "exported", "duplicates", "seconds", "size", "sha256", "shard")


async def record_results(
    directory: str | os.PathLike[str], results: Iterable[Mapping[str, Any]]
) -> Manifest:
    """Record the results of the shards' tasks (:func:`shard_result`) in ``directory``'s manifest.

    Every result is checked before anything is written: one of another plan's shard (a
    directory planned again since), or that is not a :func:`shard_result`, is refused with
    ``InvalidRequestError``. A result whose part is no longer what its task wrote (another
    task of the same shard, redelivered, wrote it again since, or it was deleted) is left out
    with a warning: its shard stays as the manifest had it. Record that task's result, or send
    the shard's task again. Shards without a result stay as they are (``pending``: send their
    tasks, then record those results). Results may be recorded in as many calls as suit.

    Then ``await late_check(client, directory, manifest)`` once every shard is complete, and
    ``merge(directory, dest)``.

    Returns:
        The manifest as written; ``manifest.complete`` is the export's verdict.

    Raises:
        InvalidRequestError: no manifest in ``directory``, a result refused as above, or
            another process coordinates the directory (``export_sharded``, ``export --shards``,
            or another ``record_results``).
    """
    check_path_type("record_results", "directory", directory)
    if isinstance(results, Mapping) or not is_collection(results):
        # None was a raw TypeError, and one result (a mapping) was read as a list of its keys.
        raise InvalidRequestError(
            "record_results(): results must be a list of shard_result()'s results (one in a "
            f"list of one), not {type(results).__name__}"
        )
    where = Path(directory)
    given = list(results)
    with coordinating(where):
        manifest = await file_work(lambda: Manifest.read(where))
        if manifest is None:
            raise InvalidRequestError(f"{where} has no {MANIFEST_NAME}: plan it first")
        checked = [(_outcome_of(manifest, result), result) for result in given]
        recorded = await file_work(lambda: _record(where, checked, manifest.verify))
        if recorded:
            await ManifestWriter(manifest, where).write()
    return manifest


def _outcome_of(manifest: Manifest, result: Any) -> ShardOutcome:
    """The manifest's shard ``result`` is of, or InvalidRequestError."""
    if not isinstance(result, Mapping) or any(key not in result for key in _RESULT_KEYS):
        raise InvalidRequestError(
            f"record_results(): not a result of shard_result(): {short(result)}"
        )
    _check_values(result)
    shard = Shard.from_dict(result["shard"]).without_ids()
    if shard.index >= len(manifest.shards) or manifest.shards[shard.index].shard != shard:
        raise InvalidRequestError(
            f"record_results(): the result of shard {shard.index} {shard.describe()} is not of "
            "this directory's plan (planned again since?): send the shard of its manifest "
            "again, and record that result"
        )
    return manifest.shards[shard.index]


#: A result's counts (optional ones may be missing, or None: a worker of an earlier release).
_COUNTS = ("exported", "duplicates")
_OPTIONAL_COUNTS = ("size", "retries", "exported_before", "count_before", "count_after")
_OPTIONAL_FLAGS = ("resumed", "checked")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _check_values(result: Mapping[str, Any]) -> None:
    """Refuse a result whose values are not as :func:`shard_result` gives them.

    Only its keys were checked: one rebuilt by hand, or mangled by a broker's serializer
    (``exported: -5``, ``1.5``), was written into the manifest, whose next read refused the
    directory as edited (``record_results``, ``late_check``, merge and reruns all stopped);
    ``"complete": "false"`` was recorded complete, and a complete one without its SHA-256
    was merged without its content check."""

    def refuse(key: str) -> InvalidRequestError:
        return InvalidRequestError(
            f"record_results(): not a result of shard_result(): {key} {short(result[key])}"
        )

    def count(value: Any) -> bool:
        return not isinstance(value, bool) and isinstance(value, int) and 0 <= value < 1 << 63

    if not isinstance(result["complete"], bool):
        raise refuse("complete")
    if not isinstance(result["shard"], Mapping):  # was a raw AttributeError (Shard.from_dict)
        raise refuse("shard")
    for key in _COUNTS:
        if not count(result[key]):
            raise refuse(key)
    for key in _OPTIONAL_COUNTS:
        if result.get(key) is not None and not count(result[key]):
            raise refuse(key)
    for key in _OPTIONAL_FLAGS:
        if result.get(key) is not None and not isinstance(result[key], bool):
            raise refuse(key)
    seconds = result["seconds"]
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not math.isfinite(seconds)
        or seconds < 0
    ):
        raise refuse("seconds")
    sha256 = result["sha256"]
    # A complete part's is read with its size (neither when it could not be read: left out,
    # with a warning, below): merge checks the part against it.
    if (result["complete"] and (sha256 is None) != (result["size"] is None)) or (
        sha256 is not None and (not isinstance(sha256, str) or not _SHA256.fullmatch(sha256))
    ):
        raise refuse("sha256")


def _record(
    where: Path, checked: list[tuple[ShardOutcome, Mapping[str, Any]]], verify: Verify | None
) -> bool:
    """Copy each result whose part is as its task wrote it; whether any was (blocking work).
    ``verify``: the manifest's, to say of a part recorded without the final check it asks."""
    recorded = False
    digests: dict[str, tuple[int, str] | None] = {}
    for outcome, result in checked:
        if outcome.file not in digests:
            part = where / outcome.file
            digests[outcome.file] = part_digest(part) if _regular_file(part) else None
        now = digests[outcome.file]
        if (
            outcome.status == "complete"
            and now == (outcome.size, outcome.sha256)
            and not (result["complete"] and result["sha256"] == outcome.sha256)
        ):
            # The part is as its shard was recorded complete: an older result of it (late-
            # checked since), or, received after it, of a task of the shard that ended in
            # MISMATCH writing the same customers, which turned the export incomplete.
            continue
        if (
            now is None
            or now[0] != result["size"]
            or (result["sha256"] is not None and now[1] != result["sha256"])
        ):
            logger.warning(
                "shard %d: %s %s: not as the task of this result wrote it (another task of "
                "the shard, sent again, wrote it since: record that one's result), not "
                "recorded",
                outcome.shard.index,
                outcome.file,
                "is missing" if now is None else f"holds {now[0]:,} bytes",
            )
            continue
        record_result(outcome, dict(result))
        recorded = True
        if verify == "always" and result.get("checked") is False:
            # Its task's export_shard was not given the manifest's verify: complete without
            # the check the export was planned with, and nothing said so.
            logger.warning(
                "shard %d: %s: recorded without its final check, which this export asks for "
                "(verify 'always' in its manifest): give each task's export_shard "
                "verify=manifest.verify, and send this shard's task again to have it checked",
                outcome.shard.index,
                outcome.file,
            )
    return recorded
