"""Sharded exports on the command line: ``export --shards``, ``worker`` and ``merge``.

``export --out DIR --shards N`` plans N ``dateCreated`` windows (or takes up the plan already in
DIR) and exports them in this process, on ``--workers K`` processes, or through the arq queue on
``--queue redis://...`` that ``dmhub-async worker`` processes serve, on any number of machines.
"""

from __future__ import annotations

import argparse
import codecs
import contextlib
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .._auth import FileTokenStore, RedisTokenStore
from .._exceptions import (
    AuthenticationError,
    DMHubError,
    InvalidRequestError,
    TokenStoreError,
    without_token_hint,
)
from .._redact import redis_password
from .._words import counted
from ..export._output import NOT_EXPANDED, REPLACED_BESIDE, unexpanded_home
from ..shards import MANIFEST_NAME, LateCheck, Manifest
from ..shards._late import late_checked, run_late_check
from ..shards._local import WorkerSettings, private_token_directory, run_in_processes
from ..shards._manifest import (
    ShardOutcome,
    check_named_as,
    merge_parts,
    merged_into_itself,
    unmergeable,
)
from ..shards._queue import (
    check_mounts,
    check_queue,
    queue_redis_error,
    worker,
    worker_credentials_hint,
)
from ..shards._run import TotalProgress, check_directory, coordinating, export_sharded, prepare
from ._errors import (
    EXIT_INCOMPLETE,
    EXIT_OK,
    CommandError,
    UsageError,
    interruptible,
    say,
    work_done,
)
from ._files import appeared, check_local, check_output
from ._parser import WORKER_REPORT
from ._report import ProgressLines, ids_listed, print_report, shown
from ._settings import (
    REDIS_PASSWORD_ENV,
    TOKEN_STORE_ENV,
    OneLine,
    check_credentials,
    open_client,
    token_store,
    token_store_spec,
    with_redis_password,
)

__all__ = ["merge_command", "sharded_export", "worker_command"]


def _progress(args: argparse.Namespace) -> tuple[bool, TotalProgress | None]:
    """A bar on a terminal, lines in a log (every few seconds), nothing when ``--quiet`` or
    ``--no-progress``."""
    if args.quiet or args.no_progress:
        return False, None
    if sys.stderr.isatty():
        return True, None
    return False, ProgressLines().update


def queue_token_store(flag: str | None) -> str | None:
    """The token store of ``worker`` and ``export --queue``: ``--token-store``, else
    ``DMHUB_TOKEN_STORE`` when it names a Redis, else None: the queue's Redis.

    ``DMHUB_TOKEN_STORE`` was not read here: with it set for every run of a machine, as the
    README says, a plain ``export`` kept the token in its store and the queue's processes in
    the queue's Redis, two holders of the app id's one token, each fetch revoking the other's.
    A file or memory store is refused, in either spelling: it is no store that workers on
    other machines can share. Ignored in the environment, the runs that use it and the queue
    revoked each other's token; taken from ``--token-store``, the planner and each worker held
    a token of their own, each fetch revoking the others'.
    """
    if flag is not None:
        _refuse_one_machine(
            flag,
            f"--token-store {flag}",
            "the queue's processes would revoke each other's token; give --token-store a "
            "redis:// URL, or leave it out to share the token through the queue's Redis",
        )
        return flag
    spec = os.environ.get(TOKEN_STORE_ENV)
    if not spec:
        return None
    _refuse_one_machine(
        spec,
        f"{TOKEN_STORE_ENV}={spec}",
        "its runs and the queue would revoke each other's token; "
        f"set {TOKEN_STORE_ENV} to a redis:// URL (the queue's will do) for every run and "
        "worker, or pass --token-store redis://... to choose this command's store",
    )
    return spec  # a Redis URL, or a mistake that token_store() refuses in its own words


def _refuse_one_machine(spec: str, given: str, why: str) -> None:
    """UsageError if ``spec`` (said as ``given``) is a memory or file store, one no queue can
    share; ``why`` says what it would do, and what to choose."""
    if spec != "memory" and not spec.startswith("file:"):
        return
    whose = "this run's" if spec == "memory" else "this machine's"
    raise UsageError(
        f"{given} is a token store of {whose} alone, which the queue's workers cannot all "
        f"share: {why}"
    )


def check_sharding(args: argparse.Namespace) -> None:
    """Flags that do not go with ``--shards``, refused before anything is sent."""
    if args.out == "-":
        raise UsageError("--shards writes a directory of parts: --out must name a directory")
    if args.checkpoint is not None:
        raise UsageError("--shards keeps a checkpoint per part in --out: drop --checkpoint")
    if args.workers > 1 and args.queue:
        raise UsageError("--workers and --queue are two ways to run shards: choose one")
    try:
        utf8 = codecs.lookup(args.encoding).name == "utf-8"
    except LookupError:
        utf8 = False
    if not utf8:  # it was ignored: no mark for Excel, and a name of no encoding was taken
        raise UsageError(
            f"--encoding {args.encoding}: the parts of --shards are written in utf-8 (merge "
            "concatenates them, so no part can start with utf-8-sig's mark)"
        )
    check_local("--out", args.out)
    try:
        a_file = Path(args.out).exists() and not Path(args.out).is_dir()
    except OSError:  # under a directory this user may not enter, a name too long: said below
        a_file = False
    if a_file:
        raise UsageError(f"--out {args.out!r}: not a directory (--shards writes one)")
    if (home := unexpanded_home(args.out)) is not None:  # as written: ./~/parts is no home
        # --out=~/exports/parts: a directory named "~" was made here, exit 0.
        raise UsageError(f"--out {args.out!r}: {NOT_EXPANDED}: give {home!r}")
    try:
        # One that cannot be made (under a file, a link to nothing): the run's error, exit 1.
        check_directory(Path(args.out))
    except InvalidRequestError as err:
        raise UsageError(f"--out {err}") from None


async def sharded_export(args: argparse.Namespace, filters: dict[str, Any]) -> int:
    """``export --out DIR --shards N``: plan, run every shard, write the manifest."""
    check_sharding(args)
    if args.queue:  # before the plan: a bad or silent queue left a plan and a raw traceback
        # The store the workers use (worker_command): planning on the default file store
        # made this process a second holder of the app id's token, and each holder's fetch
        # revoked the other's (every worker refused once an export, 4 tokens in 2 runs).
        queue = with_redis_password(args.queue)
        spec = queue_token_store(args.token_store) or queue
        args = argparse.Namespace(**{**vars(args), "queue": queue, "token_store": spec})
        await _reach_queue(args.queue, "--queue")
    # One coordinator a directory, from its plan to its last shard: a second one is refused.
    with coordinating(args.out), _memory_of_the_run(args) as args:
        _check_strays(Path(args.out), force=args.force)
        return await _sharded_export(args, filters)


@contextlib.contextmanager
def _memory_of_the_run(args: argparse.Namespace) -> Iterator[argparse.Namespace]:
    """``args``, with ``--token-store memory`` and ``--workers`` a private file for the run:
    the planner's and the workers' (run_in_processes's own would be the workers' alone), in a
    directory removed as the run ends (or, killed, by the next run: private_token_directory).

    "This run only" is every process of the run: the planner kept its token in its memory and
    the workers fetched one of their own, revoking it (two tokens a run).
    """
    if args.queue or args.workers <= 1:
        yield args
        return
    # Memory also when the cache directory cannot be written: said once, here.
    if token_store_spec(args.token_store) != "memory":
        yield args
        return
    with private_token_directory() as private:
        spec = "file:" + os.path.join(private, "tokens.json")
        yield argparse.Namespace(**{**vars(args), "token_store": spec})


#: What a plan writes in its directory: a part and its checkpoint.
_PART = re.compile(r"part-\d{5,}\.(?:jsonl|csv)(?:\.ckpt)?")


def _check_strays(where: Path, *, force: bool) -> None:
    """Refuse a directory that holds parts but no manifest, unless ``force`` (they go then).

    Someone else's parts, or a failed run's whose manifest was deleted: a new plan wrote its
    own over them without a word (and failed a shard on a stale checkpoint), where a
    single-file export refuses an existing ``--out`` without ``--force``.
    """
    if (where / MANIFEST_NAME).exists() or not where.is_dir():
        return  # the same export taken up (or refused) by its manifest; or a new directory
    strays = sorted(entry.name for entry in os.scandir(where) if _PART.fullmatch(entry.name))
    if not strays:
        return
    if not force:
        shown = ", ".join(strays[:3]) + (f" and {len(strays) - 3} more" if len(strays) > 3 else "")
        raise UsageError(
            f"--out {str(where)!r} holds {shown} but no {MANIFEST_NAME}: another export's parts; "
            "pass --force to overwrite them, or give another directory"
        )
    for name in strays:  # a stale checkpoint of another plan failed its shard
        (where / name).unlink(missing_ok=True)


async def _sharded_export(args: argparse.Namespace, filters: dict[str, Any]) -> int:
    fmt = args.format or "jsonl"
    bar, lines = _progress(args)
    async with open_client(args, args.concurrency) as dm:
        if args.workers <= 1 and not args.queue:
            manifest = await export_sharded(
                dm,
                args.out,
                args.shards,
                format=fmt,
                page_size=args.page_size,
                concurrency=args.concurrency,
                progress=bar,
                on_total=lines,
                verify=args.verify,
                **filters,
            )
            # Its run ended (its late check too): a signal as the client closes said "rerun
            # ... to resume" of a whole export, exit 130 or 143. Noted from now on (work_done).
            work_done()
            return _finish(manifest, args)
        manifest = await prepare(
            dm, args.out, args.shards, format=fmt, verify=args.verify, **filters
        )
        # Credentials: the worker processes inherit this one's environment, as the CLI's own
        # client takes them from it; nothing secret is passed or written.
        client = {
            "base_url": dm.base_url,
            "max_retries": args.max_retries,
            "timezone": dm.timezone,
            # A plain http URL off this machine, as the flag allows it here: without it, each
            # worker process's client refused it as it was made, dying in a traceback.
            "allow_insecure_http": args.allow_insecure_http,
        }
    if args.queue:
        from ..shards._queue import mark_token_store, run_on_queue

        # The token store's URL (the queue's unless --token-store or DMHUB_TOKEN_STORE names
        # another): a worker keeping the token in another store refuses its jobs.
        mark = await mark_token_store(with_redis_password(args.token_store))
        try:
            manifest = await run_on_queue(
                args.queue,
                args.out,
                manifest,
                page_size=args.page_size,
                concurrency=args.concurrency,
                progress=bar,
                on_total=lines,
                verify=manifest.verify or args.verify,  # the export's (prepare)
                password_hint=_password_hint(args.queue),  # refused mid-run: where it goes
                token_store_mark=mark,
            )
        finally:
            if mark is not None:
                await mark.aclose()
    else:
        spec = token_store_spec(args.token_store)
        store = token_store(spec)
        # A Redis store is passed on as asked: the workers used a private file, so fetched a
        # token of their own and revoked that of every process sharing the store (one token an
        # app id). With a memory store they share a private file ("": made for the run).
        token_redis = None
        if isinstance(store, RedisTokenStore):  # made to check the spec: the workers make theirs
            await store.aclose()
            token_redis = spec
        settings = WorkerSettings(
            client,
            str(store.path) if isinstance(store, FileTokenStore) else "",
            args.page_size,
            args.concurrency,
            token_redis=token_redis,
            # -v: the workers' requests too, not the plan's alone (show_requests, here).
            log_level=logging.DEBUG if args.verbose else None,
        )
        manifest = await run_in_processes(
            settings,
            args.out,
            manifest,
            args.workers,
            client=client,
            progress=bar,
            on_total=lines,
            verify=manifest.verify or args.verify,  # the export's (prepare)
        )
    if late_checked(manifest) is not None and manifest.complete:
        # The runners have no client: the last window's late check runs here, with this
        # process's credentials, once every shard is complete (export_sharded runs its own).
        async with open_client(args, args.concurrency) as dm:
            # Its credentials were compared with the export's as prepare() took it up.
            await run_late_check(dm, Path(args.out), manifest, concurrency=args.concurrency)
            work_done()  # as export_sharded's, above
    work_done()  # no late check due: the run ended, its manifest says what a rerun has to do
    return _finish(manifest, args)


#: The statuses of a shard whose export ran to its end (its retries counted, or not): a
#: failed one's error carries them (a worker that died, or of an earlier release, says none).
_ENDED = ("complete", "incomplete", "failed")


#: Why a shard whose export ended in MISMATCH is not complete, as its export's report says.
_MISMATCH = (
    "{:,} exported, but its final check could not show every customer of its shard is in it "
    "(customers changed while it ran, or some were missed)"
)


def _finish(manifest: Manifest, args: argparse.Namespace) -> int:
    data = {
        "path": args.out,
        "status": manifest.status(),
        "complete": manifest.complete,
        "exported": manifest.exported,
        "planned": manifest.planned,
        # null: some shard's export did not run to its end (or an earlier release's did)
        "counted": manifest.counted,
        "ids_listed": manifest.id_list_length,  # null: a plan of windows, counted
        "retries": manifest.retries,
        "plan_retries": manifest.plan_retries,  # null: not counted (an earlier release planned)
        # null: none ran (a shard not complete, a plan of an id list or with an end)
        "late_check": _late_said(manifest),
        # "always" once any run of the export asked for it; null: an earlier release's manifest
        "verify": manifest.verify,
        "shards": [
            {
                "file": s.file,
                "status": s.status,
                "exported": s.exported,
                # A shard that ended in MISMATCH has no error of its own: why, as the text says.
                "error": s.error or _mismatch_error(s),
                "retries": s.retries,  # null: not counted (an earlier release exported it)
                # null: not ended, or exported by an earlier release, which does not say
                "resumed": s.resumed if s.status in _RAN_TO_ITS_END else None,
                "exported_before": s.exported_before if s.status in _RAN_TO_ITS_END else None,
                "count_before": s.count_before if s.status in _RAN_TO_ITS_END else None,
                "count_after": s.count_after if s.status in _RAN_TO_ITS_END else None,
                # Whether its final check ran at its end (null: not said, as above)
                "checked": s.checked if s.status in _RAN_TO_ITS_END else None,
            }
            for s in manifest.shards
        ],
    }
    done = sum(s.status == "complete" for s in manifest.shards)
    retries, data["retries"] = _retries(manifest)
    text = (
        f"exported {counted(manifest.exported, 'customer')} in "
        f"{counted(len(manifest.shards), 'part')} to {shown(args.out)} ({done} of "
        f"{len(manifest.shards)} complete; {_planned(manifest)}; "
        f"{retries})"
    )
    said = checked_line(manifest)
    if manifest.verify == "always" and getattr(args, "verify", "always") != "always":
        # A rerun without --verify of an export begun with it: why every part is checked. Of
        # the final-check line; on a line of its own when no part's check ran (it was glued to
        # the summary line, "...; 0 retries) (--verify always kept ...)").
        kept = "--verify always kept: an earlier run of this export asked for it"
        said = f"{said} ({kept})" if said else kept
    if said:
        text += f"\n{said}"
    late = manifest.late_check
    if late is not None:
        text += f"\n{_late_line(late)}"
    for s in manifest.shards:
        resumed = _resumed(s)
        mismatch = _mismatch(s)
        if mismatch is not None:
            # Its export ran to its end: it said "incomplete" alone, where a failed one says why.
            text += f"\n  {s.file}: incomplete (MISMATCH): {mismatch}"
            text += f"; {resumed}" if resumed else ""
        elif s.status == "complete":
            # As a one-process export's report says it: a rerun's said nothing of it.
            text += f"\n  {s.file}: complete, {resumed}" if resumed else ""
        else:
            # Its error may quote the directory's name (an OSError's file): one line all the same.
            text += f"\n  {s.file}: {s.status}" + (f": {shown(s.error)}" if s.error else "")
    if not manifest.complete:
        text += "\nrerun the same command to finish the parts that are not complete"
    print_report(data, text, style=args.report, quiet=args.quiet, out=sys.stdout)
    if not manifest.complete and args.quiet and args.report == "text":
        # As a one-file export says it: exit 3 alone said nothing of what to do.
        say(
            f"dmhub-async: incomplete: {done} of {counted(len(manifest.shards), 'part')} "
            "complete in "
            f"{args.out!r}; rerun the same command to finish them"
        )
    return EXIT_OK if manifest.complete else EXIT_INCOMPLETE


def _mismatch(outcome: ShardOutcome) -> str | None:
    """Why a shard whose export ended in MISMATCH (incomplete, no error of its own) is not
    complete, as its export's report says it (``1,204 exported, but its final check ...; the
    service counted 1,200 before and 1,210 after``); None for any other shard."""
    if outcome.status != "incomplete" or outcome.error:
        return None
    said = _MISMATCH.format(outcome.exported)
    if outcome.count_before is not None and outcome.count_after is not None:
        # As a one-process export's says it: "1,204 exported" alone, against nothing.
        said += (
            f"; the service counted {outcome.count_before:,} before and "
            f"{outcome.count_after:,} after"
        )
    return said


def _mismatch_error(outcome: ShardOutcome) -> str | None:
    """The JSON report's ``error`` of a shard that ended in MISMATCH (``MISMATCH: 1,204
    exported, ...``, the text report's reason), else None.

    It was null: a script reading the report could not tell why such a shard was not
    complete, nor tell it from one whose run had stopped before it ended."""
    mismatch = _mismatch(outcome)
    return None if mismatch is None else f"MISMATCH: {mismatch}"


def checked_line(manifest: Manifest, merged: list[str] | None = None) -> str | None:
    """``final check (an id-only walk against the service) run at the end of 8 of 8 parts``,
    None when it ran at the end of none (or no part says: an earlier release's).

    ``merged``: the parts a merge put in its file, when it left some out (``... of 3 of the 3
    parts merged (1 left out)``): it counted the checks of parts that were not in the file."""
    shards = _among(manifest, merged)
    checked = sum(bool(s.checked) for s in shards if s.status in _RAN_TO_ITS_END)
    if not checked:
        return None
    # --verify always: nothing said whether each shard's final check ran.
    said = "final check (an id-only walk against the service) run at the end of "
    if len(shards) == len(manifest.shards):
        return said + f"{checked} of {counted(len(shards), 'part')}"
    left_out = len(manifest.shards) - len(shards)
    return said + (
        f"{checked} of the {counted(len(shards), 'part')} merged ({left_out:,} left out)"
    )


def _among(manifest: Manifest, merged: list[str] | None) -> list[ShardOutcome]:
    """The manifest's shards whose parts are in ``merged`` (all of them when it is None)."""
    if merged is None:
        return list(manifest.shards)
    names = set(merged)
    return [s for s in manifest.shards if s.file in names]


def _late_line(late: LateCheck) -> str:
    """The report's line of the late check: what it added, and whether it passed.

    "0 customers created since its shard ended were added" read as customers created and
    then not added (or as a check that did nothing); and a check that could not pass said
    what it added as one that passed does, its MISMATCH only further down, of the part.
    """
    said = f"late check of {late.file}: "
    if late.added:
        said += (
            f"{counted(late.added, 'customer')} created since its shard ended "
            f"{'was' if late.added == 1 else 'were'} added"
        )
    elif late.verified:
        return said + (
            "every customer of its window is in it (none created since its shard ended was missing)"
        )
    else:
        said += "nothing added"
    if not late.verified:
        said += (
            ", but customers of its window changed during every walk of the check: "
            "a rerun checks it again"
        )
    return said


def _late_said(manifest: Manifest) -> dict[str, Any] | None:
    """The report's ``late_check``: the part, the customers it added, whether it verified."""
    late = manifest.late_check
    if late is None:
        return None
    return {"file": late.file, "added": late.added, "verified": late.verified}


#: The statuses of a shard whose export ran to its end and said how it began.
_RAN_TO_ITS_END = ("complete", "incomplete")


def _resumed(outcome: ShardOutcome) -> str | None:
    """``resumed from its checkpoint (1,200 exported before)`` for a shard whose last export
    took its part up from its checkpoint, else None."""
    if not outcome.resumed or outcome.status not in _RAN_TO_ITS_END:
        return None
    return f"resumed from its checkpoint ({outcome.exported_before or 0:,} exported before)"


def _planned(manifest: Manifest) -> str:
    """What the plan knew of the export's size: the customers it counted, or the ids listed.

    A plan of an id list counts nothing (docs/sharding.md): its planned count is the ids, an
    id of no customer (or of one the filters leave out) included. It was said to be "counted
    when planned": 1,000 counted, 402 exported, complete, as if 598 customers were missing.
    """
    listed = manifest.id_list_length
    if listed is None:
        said = f"{manifest.planned:,} counted when planned"
        counted = manifest.counted
        if counted is None:
            return said
        # The plan's count alone read as the service's: 5,000 planned, 5,010 exported and
        # complete looked like ten customers twice.
        if counted == manifest.planned:
            return f"{said} and as its parts ended"
        return f"{said}, {counted:,} as its parts ended"
    return ids_listed(listed, manifest.exported, complete=manifest.complete)


def _retries(manifest: Manifest) -> tuple[str, int | None]:
    """The report's retries (``14 retries (2 planning)``, and what they leave out), and its
    JSON ``retries``: None when no part's were counted.

    A part a worker of an earlier release exported counts none, and a plan it made or
    rewrote neither: "0 retries" said none were taken. With every part so, "0 retries, not
    counting ..." still claimed a count nobody made. A failed part's are counted (its error
    carries them); one that failed without saying (its worker died) is named as left out:
    its retries were counted nowhere, and the total said nothing of them.
    """
    ended = [s for s in manifest.shards if s.status in _ENDED]
    earlier = [s.file for s in ended if s.retries is None and s.status != "failed"]
    failed = [s.file for s in ended if s.retries is None and s.status == "failed"]
    plan = manifest.plan_retries
    if ended and len(earlier) + len(failed) == len(ended):
        why = [
            *(["exported by an earlier release"] if earlier else []),
            *(["failed before they were counted"] if failed else []),
        ]
        said = f"the parts' retries not counted ({', or '.join(why)})"
        if plan:
            said = f"{counted(plan, 'retry', 'retries')} planning, {said}"
        elif plan is None:
            said += ", nor the plan's"
        return said, None
    said = counted(manifest.retries, "retry", "retries") + (f" ({plan} planning)" if plan else "")
    left_out = []
    if earlier:
        left_out.append(f"{_named(earlier)}'s (exported by an earlier release)")
    if failed:
        left_out.append(f"{_named(failed)}'s (failed before they were counted)")
    if plan is None:  # planned by an earlier release, or rewritten by one
        left_out.append("the plan's (made by an earlier release)")
    if left_out:
        said += ", not counting " + " or ".join(left_out)
    return said, manifest.retries


def _named(files: list[str]) -> str:
    """``part-00000.jsonl, part-00001.jsonl and 3 more``."""
    return ", ".join(files[:3]) + (f" and {len(files) - 3} more" if files[3:] else "")


async def worker_command(args: argparse.Namespace) -> int:
    """``worker --redis URL``: serve the export queue until stopped (SIGTERM, Ctrl-C)."""
    if args.report == "json":  # a script would wait for an object that never comes
        say(f"dmhub-async: --report json: {WORKER_REPORT}")
    client: dict[str, Any] = {"max_retries": args.max_retries}
    if args.allow_insecure_http:
        # Its jobs' client: without it, the worker stopped as it started, "pass
        # --allow-insecure-http if you must", the flag given.
        client["allow_insecure_http"] = True
    if getattr(args, "timezone", None):
        client["timezone"] = args.timezone
    mounts = _mounts(args.mount)
    check_credentials()  # each job's client reads them: every job would fail
    spec = queue_token_store(args.token_store)
    store = token_store(spec) if spec is not None else None
    if store is not None:
        client["token_store"] = store
    args = argparse.Namespace(**{**vars(args), "redis": with_redis_password(args.redis)})
    await _reach_queue(args.redis, "--redis", rate_limited=args.rate_limit is not None)
    if isinstance(store, RedisTokenStore):
        await _reach_token_store(store)
    elif store is None:  # the queue's Redis, whose store worker() makes: checked the same
        await _reach_token_store(RedisTokenStore(args.redis), made_here=True)
    if args.rate_limit is not None:
        await _reach_shared_limit(args.redis, args.rate_limit)
    from redis.exceptions import RedisError  # installed: _reach_queue found it

    arq_worker = worker(
        args.redis,
        client=client,
        rate_limit=args.rate_limit,
        max_jobs=args.jobs,
        concurrency=args.concurrency,
        burst=args.burst,
        handle_signals=False,
        mounts=mounts,
    )
    with _arq_log(verbose=args.verbose):
        try:
            await arq_worker.async_run()
        except (RedisError, OSError) as err:  # it went away: arq's own tries ended
            gone = queue_redis_error(
                args.redis,
                err,
                password_hint=_password_hint(args.redis),  # refused mid-run: where it goes
                then="start the worker again once it is back",
            )
            raise CommandError(str(gone)) from None
        finally:
            await arq_worker.close()
    failed = arq_worker.jobs_failed
    if args.burst and failed:
        # A CI script or a batch machine running `worker --burst` could not tell: it exited 0
        # with every shard it ran failed (each said in its line above).
        raise CommandError(failed_jobs(failed, failed + arq_worker.jobs_complete))
    return EXIT_OK


def failed_jobs(failed: int, ran: int) -> str:
    """A burst worker's last line, of the ``failed`` of the ``ran`` shard jobs it ran: "1 of
    the 1", "2 of the 2" read oddly; when all failed, "the shard job", "both", "all 3"."""
    if failed < ran:
        jobs = f"{failed:,} of the {counted(ran, 'shard job')}"
    elif ran == 1:
        jobs = "the shard job"
    elif ran == 2:
        jobs = "both shard jobs"
    else:
        jobs = f"all {ran:,} shard jobs"
    return f"{jobs} this worker ran failed (said above)"


def _mounts(given: list[str]) -> dict[str, str]:
    """``--mount COORDINATOR_PATH=LOCAL_PATH`` (repeated) as ``worker(mounts=)``, checked."""
    pairs = []
    for mount in given:
        theirs, equals, mine = mount.partition("=")
        if not equals or not theirs or not mine:
            raise UsageError(f"--mount {mount}: give COORDINATOR_PATH=LOCAL_PATH")
        pairs.append((theirs, mine))
    try:
        mounts = check_mounts(dict(pairs))
    except InvalidRequestError as err:
        raise UsageError(str(err).replace("worker(): mounts", "--mount")) from None
    if len(mounts) != len(pairs):
        raise UsageError("--mount: a COORDINATOR_PATH is given twice")
    return mounts


async def _reach_token_store(store: RedisTokenStore, *, made_here: bool = False) -> None:
    """A worker's Redis token store, read once and its lock taken once as it starts
    (TokenStoreError if it cannot be); closed after when ``made_here``.

    First used by a job, a store that refuses the worker (a wrong password, a database Redis
    does not have) let it start and take the queue's shards, failing each one. So did one
    whose Redis user may not run the lock's scripts (EVALSHA), which the read alone passed:
    each shard failed at its first token fetch.
    """
    try:
        await store.get("dmhub-async:worker-start")  # a key no token is kept at
        async with store.lock("dmhub-async:worker-start"):  # its scripts run: refused here
            pass
    except TokenStoreError:
        with contextlib.suppress(Exception):
            await store.aclose()
        raise
    if made_here:
        await store.aclose()


async def _reach_shared_limit(redis_url: str, rate: float) -> None:
    """A worker's shared rate limit, one turn of it taken as the worker starts (CommandError
    if Redis refuses it, or cannot be reached).

    Refused (an ACL user without EVALSHA, which its window's scripts need), the worker took
    the queue's shards and failed each at its first request, a hundredth of a second each:
    one such worker in a fleet failed a whole export.
    """
    from .._shared_rate import RedisRateLimiter

    # The limit the worker's jobs share: its key as worker() makes it (the app id).
    limiter = RedisRateLimiter(redis_url, rate, key=os.environ.get("DMHUB_APP_ID") or "default")
    try:
        await limiter.acquire()
    except DMHubError as err:
        said = str(err).removesuffix(": no request was sent")
        raise CommandError(f"--rate-limit: {said}: the worker takes no shard") from None
    finally:
        await limiter.aclose()


_THIS_WORKER = "this worker's"
_ARQ_CLOSE = "shutdown on SIGUSR1 ◆"


class _OneLine(OneLine):
    """An arq log record as one line, ``dmhub-async: ...``: its message without the traceback."""

    def text(self, record: logging.LogRecord) -> str:
        text = super().text(record)
        # arq's close names SIGUSR1 when it handles no signal itself, as here (the CLI does):
        # sent none, the worker said "shutdown on SIGUSR1" before "stopped by SIGTERM".
        text = text.replace(_ARQ_CLOSE, "shutdown ◆", 1)
        failure = record.exc_info[1] if record.exc_info else None
        if isinstance(failure, AuthenticationError):  # a shard failed by this worker's token
            # What to check said once, in the command line's words (as the export's report
            # says it): not also the library's "check app_id and secret" before them.
            text = f"{without_token_hint(text)}; {worker_credentials_hint(failure, _THIS_WORKER)}"
        return text


@contextlib.contextmanager
def _arq_log(*, verbose: bool) -> Iterator[None]:
    """arq's log on stderr, a line a record: each failed shard's line (with ``-v``, each
    job's start and end too), never a traceback.

    Without a handler of its own, arq's failed jobs reached stderr through logging's last
    resort, each with its whole traceback (some 60 lines a shard).
    """
    arq_logger = logging.getLogger("arq")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_OneLine())
    before = arq_logger.level, arq_logger.propagate
    arq_logger.addHandler(handler)
    arq_logger.setLevel(logging.INFO if verbose else logging.WARNING)
    arq_logger.propagate = False
    try:
        yield
    finally:
        arq_logger.removeHandler(handler)
        arq_logger.setLevel(before[0])
        arq_logger.propagate = before[1]


async def _reach_queue(redis_url: str, flag: str, *, rate_limited: bool = False) -> None:
    try:
        import arq  # noqa: F401
        import redis  # noqa: F401
    except ImportError:
        raise UsageError(
            f"{flag} needs the redis extra: pip install 'dmhub-async[redis]'"
        ) from None
    if rate_limited:
        # The shared limit's library, made as the worker starts: without it (redis-py and arq
        # installed by hand), a worker's start was a traceback once it had reached the queue.
        try:
            import limits.aio.storage  # noqa: F401
        except ImportError:
            raise UsageError(
                "--rate-limit needs the redis extra: pip install 'dmhub-async[redis]'"
            ) from None
    try:
        await check_queue(redis_url, flag, password_hint=_password_hint(redis_url))
    except InvalidRequestError as err:
        raise UsageError(str(err)) from None
    except DMHubError as err:
        raise CommandError(str(err)) from None


def _password_hint(url: str) -> str:
    """Where a command's Redis password goes: the variable, not the URL (which ps shows).
    ``url`` as sent (:func:`with_redis_password`'s): "check $DMHUB_REDIS_PASSWORD" only when
    the variable's password is the one it holds, not the URL's own (which is sent over it)."""
    password = os.environ.get(REDIS_PASSWORD_ENV)
    if password and redis_password(url) == password:
        return f"check ${REDIS_PASSWORD_ENV}"
    if password:
        return (
            f"the URL's own password was sent, not ${REDIS_PASSWORD_ENV}'s: check it, or give"
            " none in the URL (which ps shows)"
        )
    return f"give its password in ${REDIS_PASSWORD_ENV} (and none in the URL, which ps shows)"


def _no_such_directory(given: str) -> str:
    """``'GIVEN': no such directory``; for a ``~/parts`` no shell expanded (``merge '~/parts'``,
    quoted) that is in the home, the path meant, as the path flags say it (:func:`no_such_file`):
    "no such directory" alone, of the user's own directory, said nothing of why. Quoted, as
    merge's other refusals quote the directory (``repr``: a name's end ran into the words)."""
    said = f"{given!r}: no such directory"
    home = unexpanded_home(given)
    if home is None or not os.path.isdir(home):
        return said
    return (
        f"{said}: a leading ~ is not expanded here (a shell expands it only where a word starts,"
        f" unquoted: ~/x, not '~/x'): give {home!r}"
    )


def _merge(args: argparse.Namespace) -> tuple[int, list[str]]:
    takes = "merge takes the directory an `export --shards N` wrote"
    why = unmergeable(args.directory, takes, takes_when_denied=False)
    if why is not None:
        raise CommandError(why)
    if not os.path.isdir(args.directory):
        raise CommandError(_no_such_directory(args.directory))
    if merged_into_itself(args.directory, args.out):
        # Into the manifest or a part, with --force: the merge wrote over its own input and
        # said it had merged, and the export could no longer be rerun or merged.
        raise UsageError(
            f"--out {args.out!r} is inside the export's directory {args.directory!r}: "
            "give a file elsewhere"
        )
    check_output(args.out, force=args.force, stdout=False, beside=REPLACED_BESIDE)
    manifest = Manifest.read(args.directory)
    if manifest is not None:
        # A name of the other format (all.csv of JSON lines parts) is the command's to change,
        # as export's --out all.json is: exit 2, not an error to run again later (exit 1).
        try:
            check_named_as(Path(args.out), manifest.format, f"--out {args.out}")
        except InvalidRequestError as err:
            raise UsageError(str(err)) from None
    try:
        return merge_parts(
            args.directory, args.out, allow_incomplete=args.allow_incomplete, replace=args.force
        )
    except FileExistsError as err:
        if err.filename != str(Path(args.out)):
            raise
        raise appeared(args.out) from None


async def merge_command(args: argparse.Namespace) -> int:
    """``merge DIR --out FILE``: the parts of a sharded export as one file, in shard order."""
    with interruptible():  # blocking: the loop would see a signal only once it had ended
        records, merged = _merge(args)
    # Records, as merge() counts them: a CSV record may span lines (a line break in a field).
    # "lines" is the name this count had before, kept for the scripts that read it.
    data: dict[str, Any] = {"path": args.out, "records": records, "lines": records}
    text = (
        f"merged {counted(records, 'record')} from {shown(args.directory)} into {shown(args.out)}"
    )
    # Whether the parts were checked against the service as their shards ended: a merge said
    # nothing of it, and the export's --verify was recorded nowhere.
    manifest = Manifest.read(args.directory)
    if manifest is not None:
        # Whether the file is the whole export, and which parts are not in it: with
        # --allow-incomplete, a script reading the report got the records alone, as of a whole
        # export's merge (stderr alone said a part was left out or not complete).
        data["complete"] = manifest.complete and len(merged) == len(manifest.shards)
        data["left_out"] = [s.file for s in manifest.shards if s.file not in set(merged)]
        # The parts in the file: --allow-incomplete counted the checks of parts it left out.
        shards = _among(manifest, merged)
        said = [s.checked for s in shards if s.status in _RAN_TO_ITS_END]
        data["verify"] = manifest.verify  # null: an earlier release's manifest, which does not say
        # merged parts whose final check ran; null when none says (exported by an earlier release)
        data["checked"] = sum(bool(c) for c in said) if any(c is not None for c in said) else None
        line = checked_line(manifest, merged)
        text += f"\n{line}" if line else ""
    print_report(data, text, style=args.report, quiet=args.quiet, out=sys.stdout)
    return EXIT_OK
