"""Shards on worker processes of this machine: ``dmhub-async export --shards N --workers K``.

K processes (spawned, not forked: an event loop does not survive a fork) each build one client
and take shards from a queue until it is empty. They share the one token of the appid through a
:class:`~dmhub_async.FileTokenStore`, so K processes cost one token request, not K that revoke
each other. Each process reports progress on a pipe of its own; this process alone writes the
manifest and draws the one progress bar. (Not one queue for all: a worker killed while it wrote
to a shared queue would leave its lock held and no other worker's report would arrive again.)
A worker that dies (killed, out of memory) is replaced and its shard handed to the replacement,
which resumes from the shard's checkpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import pickle
import queue
import shutil
import signal
import stat
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import attrs

from .._auth import FileTokenStore, RedisTokenStore, TokenStore
from .._exceptions import DMHubError
from .._logging import show_log
from .._tasks import to_the_end
from .._validate import check_flag
from ..export import ExportProgress
from ..export._export import Verify, check_verify, retries_of
from ._manifest import Manifest, ManifestWriter, ShardOutcome, checkpoint_name, part_name
from ._run import (
    ProgressBar,
    TotalProgress,
    coordinating,
    export_shard,
    failure_reason,
    pending,
    record_result,
    result_of,
    stopped,
)

__all__ = ["WorkerSettings", "private_token_directory", "run_in_processes"]

#: How often a shard is handed out again after its worker died, before it is marked failed.
MAX_TRIES = 3
#: Seconds the workers have, all together, to end once the run stops (each its current page,
#: told by its closed pipe), before those still running are killed.
STOP_GRACE = 10.0
#: Seconds between a waiting worker's checks that its coordinator is still alive.
PARENT_CHECK = 0.5


@attrs.frozen
class WorkerSettings:
    """What a worker process needs to build its client: picklable, sent to the children only.

    ``client`` holds ``DMHubClient`` keyword arguments (credentials included: they go to the
    child over a pipe, never to a file or a log). ``token_file`` is the shared token store.
    """

    client: Mapping[str, Any] = attrs.field(repr=False)
    token_file: str
    page_size: int = 100
    concurrency: int = 8
    #: A Redis token store's URL (it may hold a password: never shown), used instead of
    #: ``token_file`` when given: the store the command was told to share the token through.
    token_redis: str | None = attrs.field(default=None, repr=False)
    #: The library's log in the worker processes (``logging.DEBUG`` for ``dmhub-async -v``),
    #: on their stderr, as :func:`~dmhub_async._logging.show_log` shows it; None: as
    #: ``DMHUB_LOG`` in their environment says. Spawned, they start with no logging set up:
    #: ``-v`` logged the coordinator's requests alone, none of the pages the workers walked.
    log_level: int | None = None


def _child(
    settings: WorkerSettings, directory: str, fmt: str, tasks: Any, events: Connection
) -> None:
    """A worker process: export shards taken from ``tasks`` until it gets None, each event
    sent on ``events``, the write end of its own pipe."""
    if settings.log_level is not None:
        show_log(settings.log_level)
    try:
        asyncio.run(_child_loop(settings, Path(directory), fmt, tasks, events))
    except (BrokenPipeError, EOFError):
        # Its coordinator stopped (Ctrl-C, SIGTERM) and closed its end of the pipe: the
        # shard's export left its checkpoint on its way out, and the coordinator says in one
        # line what happened. Each worker printed a raw traceback of its own.
        return


async def _child_loop(
    settings: WorkerSettings, directory: Path, fmt: str, tasks: Any, events: Connection
) -> None:
    from .._client import DMHubClient
    from ._plan import Shard

    loop = asyncio.get_running_loop()
    store: TokenStore = (
        RedisTokenStore(settings.token_redis)
        if settings.token_redis
        else FileTokenStore(settings.token_file)
    )
    go_on, joined = (
        (True, None) if settings.token_redis else _join_token_directory(settings.token_file)
    )
    if not go_on:
        return  # its run's private token directory is gone: the run is over
    async with contextlib.AsyncExitStack() as stack:
        if joined is not None:
            stack.callback(os.close, joined)
        if isinstance(store, RedisTokenStore):
            stack.push_async_callback(store.aclose)
        client = await stack.enter_async_context(DMHubClient(**settings.client, token_store=store))
        while True:
            task = await loop.run_in_executor(None, _next_task, tasks)
            if task is None:
                return
            # The shard, and the export's verify: sent by the coordinator of this process's
            # own release (spawned from it), so of one shape.
            shard = Shard.from_dict(task["shard"])
            index = shard.index
            try:
                report = await export_shard(
                    client,
                    shard,
                    directory / part_name(index, fmt),
                    checkpoint=directory / checkpoint_name(index, fmt),
                    format=fmt,
                    page_size=settings.page_size,
                    concurrency=settings.concurrency,
                    on_progress=_reporter(events, index),
                    verify=task["verify"],
                )
            except BrokenPipeError:
                raise  # the coordinator is gone: no one to tell (_child ends quietly)
            except (DMHubError, OSError) as err:
                # OSError: the part or its checkpoint could not be written (a full disk, a
                # read-only directory). The worker died of it with a raw traceback, and the
                # shard was taken for a dead worker's: tried 3 times, the reason lost.
                _send(events, ("failed", index, (failure_reason(err), retries_of(err))))
            else:
                _send(events, ("done", index, await result_of(report)))


def _next_task(tasks: Any) -> Any:
    """The next task from ``tasks``, or None once the coordinator is gone.

    A coordinator killed (SIGKILL, the OOM killer) cannot tell its workers to end, and its
    queue never closes (each worker holds both of its ends): they waited for ever, idle.
    """
    parent = multiprocessing.parent_process()
    while True:
        try:
            return tasks.get(timeout=PARENT_CHECK)
        except queue.Empty:
            if parent is not None and not parent.is_alive():
                return None


def _reporter(events: Connection, index: int) -> Callable[[ExportProgress], None]:
    def report(progress: ExportProgress) -> None:
        _send(events, ("progress", index, progress.exported))

    return report


def _send(events: Connection, event: tuple[str, int, Any]) -> None:
    """Send ``event`` on a worker's pipe, as ``events.send`` does (the coordinator's ``recv``
    reads it), but pickled to bytes first.

    ``Connection.send`` pickles into a ``BytesIO`` and sends a view of its buffer; on a pipe the
    coordinator had closed (Ctrl-C, SIGTERM), the BrokenPipeError's traceback kept that view,
    and on Python 3.12 and 3.13 the collector then finalized the ``BytesIO`` first: each worker
    printed "Exception ignored in: <_io.BytesIO ...> BufferError" under the CLI's one line.
    """
    events.send_bytes(pickle.dumps(event))


#: The temporary directories that hold a run's private token file (``tokens.json``).
_PRIVATE_PREFIX = "dmhub-tokens-"
#: The file in such a directory that its run holds locked (flock) for as long as it lives.
_OWNER = "owner.lock"
#: What the owner file is called while its run makes it (:func:`_hold`).
_OWNER_MADE = ".owner"
#: Seconds after which a directory that never got its owner file is a run's killed as it made
#: it: a live run renames the owner file in place within microseconds of making the directory.
_MAKING = 60.0


@contextlib.contextmanager
def private_token_directory() -> Iterator[str]:
    """A private directory (mode 0700) of the temporary directory, for a run's token file
    (mode 0600), removed as the run ends.

    A run killed with SIGKILL (or out of memory) cannot remove it: it left a live token on disk
    that nobody removed (the machine's /tmp cleaner, days later). So the run holds a lock on
    a file in it for its whole life, which the kernel releases when the process dies however
    it dies, and each run removes, as it starts, the directories of this user that no live run
    holds (:func:`_remove_stale_token_directories`). The lock is shared: the run's worker
    processes hold it too (:func:`_join_token_directory`), so a directory whose coordinator
    was killed is not removed while its workers still run.
    """
    _remove_stale_token_directories()
    private = tempfile.mkdtemp(prefix=_PRIVATE_PREFIX)
    owner = None
    try:
        owner = _hold(private)
        yield private
    finally:
        shutil.rmtree(private, ignore_errors=True)
        if owner is not None:
            os.close(owner)  # after the removal: no other run may take the directory for stale


def _hold(private: str) -> int | None:
    """The descriptor of the directory's owner file, locked; None where there is no flock."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; a killed run's directory stays (as it did)
        return None
    # Locked under another name, then renamed: no other run ever sees the owner file unlocked,
    # which it would take for a dead run's.
    made = os.path.join(private, _OWNER_MADE)
    fd = os.open(made, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        os.rename(made, os.path.join(private, _OWNER))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _join_token_directory(token_file: str) -> tuple[bool, int | None]:
    """A worker's share of the lock of its run's private token directory, if ``token_file``
    is in one: (whether the worker may go on, the descriptor it holds, or None).

    A coordinator killed outright leaves its workers running until their current page ends.
    The next run took the directory for a dead run's and removed it under them, and a worker's
    next token (FileTokenStore makes its directory again) was left in a directory without an
    owner file, which no run ever removes: a live token on disk for good. A worker that finds
    the directory removed, or being removed, does not go on: its run is over.
    """
    owner = os.path.join(os.path.dirname(token_file), _OWNER)
    if not os.path.basename(os.path.dirname(token_file)).startswith(_PRIVATE_PREFIX):
        return True, None  # a store the caller named: not a run's private directory
    try:
        import fcntl
    except ImportError:
        return True, None
    try:
        fd = os.open(owner, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False, None  # removed (every run's directory has its owner file): over
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        held = os.fstat(fd)
        now = os.stat(owner, follow_symlinks=False)
        if (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino):
            raise FileNotFoundError(owner)  # removed between the open and the lock
    except OSError:
        os.close(fd)
        return False, None  # being removed (a later run holds it), or gone
    return True, fd


def _remove_stale_token_directories() -> None:
    """Remove this user's private token directories whose run is dead: its owner file
    unlocked, or none made in it a minute after the directory (:func:`_abandoned`). Any other
    without an owner file (an earlier release's, or one being made) is left."""
    try:
        import fcntl
    except ImportError:
        return
    try:
        entries = list(os.scandir(tempfile.gettempdir()))
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(_PRIVATE_PREFIX):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
                continue
            fd = os.open(os.path.join(entry.path, _OWNER), os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            if _abandoned(entry.path, st):
                shutil.rmtree(entry.path, ignore_errors=True)
            continue
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue  # a live run holds it
        else:
            shutil.rmtree(entry.path, ignore_errors=True)
        finally:
            os.close(fd)


def _abandoned(path: str, st: os.stat_result) -> bool:
    """Whether the private token directory at ``path`` (its status ``st``), which has no
    owner file, is a run's killed as it made it: older than :data:`_MAKING`, and nothing in it
    but the owner file it had not renamed yet.

    Its run killed between the two (SIGKILL, the OOM killer), it was left for good: no run
    removed a directory without an owner file, and each such kill left one more. One that
    holds anything else (a token file: an earlier release's run) is left as it was.
    """
    if st.st_mtime > time.time() - _MAKING:
        return False  # being made, perhaps
    try:
        names = os.listdir(path)
    except OSError:
        return False
    return set(names) <= {_OWNER_MADE}


async def run_in_processes(
    settings: WorkerSettings | None,
    directory: str | os.PathLike[str],
    manifest: Manifest,
    workers: int,
    *,
    client: Mapping[str, Any] | None = None,
    progress: bool = True,
    on_total: TotalProgress | None = None,
    verify: Verify = "auto",
) -> Manifest:
    """Export the manifest's pending shards on ``workers`` processes; the manifest at the end.

    Pass ``settings``, or only ``client`` (``DMHubClient`` keyword arguments); the token is
    shared through a private temporary file store unless ``settings`` names a store.
    ``verify`` is each shard's export's, as for ``export_customers`` (sent with each shard).
    """
    if settings is None:
        settings = WorkerSettings(client or {}, "")
    # Its credentials (the secret) are kept in the settings alone, whose repr shows none: in
    # this frame's variables they went to an error tracker with any error that came through.
    del client
    check_flag("run_in_processes", "progress", progress)
    check_verify(verify, "run_in_processes(): ")
    where = Path(directory)
    todo = {o.shard.index: o for o in pending(manifest.shards)}
    if not todo:
        return manifest
    with coordinating(where), contextlib.ExitStack() as stack:
        if not settings.token_file and not settings.token_redis:
            private = stack.enter_context(private_token_directory())
            settings = attrs.evolve(settings, token_file=os.path.join(private, "tokens.json"))
        bar = ProgressBar(progress, manifest, on_total)
        workers = max(1, min(workers, len(todo)))
        return await _supervise(settings, where, manifest, todo, workers, bar, verify)


async def _supervise(
    settings: WorkerSettings,
    where: Path,
    manifest: Manifest,
    todo: dict[int, ShardOutcome],
    workers: int,
    bar: ProgressBar,
    verify: Verify,
) -> Manifest:
    ctx = multiprocessing.get_context("spawn")
    events: list[Connection] = []  # the read end of each live worker's pipe
    waiting = list(todo)  # shard indexes not handed out yet, in order
    # Each worker has its own task queue, so this process knows which shard a worker holds
    # even when the worker is killed before it could say so.
    busy: dict[BaseProcess, tuple[Any, int | None]] = {}
    tries: dict[int, int] = {}
    loop = asyncio.get_running_loop()

    def hand_out(proc: BaseProcess, tasks: Any) -> None:
        index = waiting.pop(0) if waiting else None
        busy[proc] = (tasks, index)
        if index is None:
            tasks.put(None)
            return
        tries[index] = tries.get(index, 0) + 1
        todo[index].status = "running"
        tasks.put({"shard": todo[index].shard.without_ids().to_dict(), "verify": verify})

    def spawn() -> None:
        tasks: Any = ctx.Queue()
        reader, writer = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=_child,
            args=(settings, str(where), manifest.format, tasks, writer),
            daemon=True,
        )
        with _ctrl_c_held():
            proc.start()
        writer.close()  # the worker's is the only write end: its death ends the reader's file
        events.append(reader)
        hand_out(proc, tasks)

    manifest_writes = ManifestWriter(manifest, where)
    unwritten = False  # shards ended since the manifest was last written

    def finish(index: int) -> None:
        nonlocal unwritten
        todo.pop(index, None)
        unwritten = True
        for proc, (tasks, held) in list(busy.items()):
            if held == index:
                hand_out(proc, tasks)

    for _ in range(workers):
        spawn()
    try:
        while todo:
            ready = await loop.run_in_executor(None, wait, list(events), 0.5)
            ended = False
            for reader in ready:
                assert isinstance(reader, Connection)
                try:
                    kind, index, value = reader.recv()
                except (EOFError, OSError):  # its worker is gone, maybe in the middle of one
                    events.remove(reader)
                    reader.close()
                    ended = True
                    continue
                if kind == "progress" and index in todo:
                    bar.update(index, value)
                elif kind == "done" and index in todo:
                    record_result(todo[index], value)
                    bar.settled(todo[index])
                    finish(index)
                elif kind == "failed" and index in todo:
                    todo[index].status, (todo[index].error, todo[index].retries) = "failed", value
                    finish(index)
            if ended or not ready:
                _replace_the_dead(busy, todo, waiting, tries, finish, spawn)
            if unwritten:  # on a thread: the loop reads the workers' progress meanwhile
                unwritten = False
                await manifest_writes.write()
    finally:
        # To its end however often the run is cancelled meanwhile: a second cancel (a task
        # group's after a timeout's; anyio's cancel scope, at every turn) landing in the wait
        # for a worker came out of it, and the run returned at once with its workers alive
        # (exporting on, their parts' locks held) and its manifest saying them "running".
        await to_the_end(_stop(events, busy, bar, manifest, manifest_writes))
    return manifest


async def _stop(
    events: list[Connection],
    busy: dict[BaseProcess, tuple[Any, int | None]],
    bar: ProgressBar,
    manifest: Manifest,
    manifest_writes: ManifestWriter,
) -> None:
    """Stop the workers of a run that ends (killed past the grace period), and write the
    manifest as they left it."""
    loop = asyncio.get_running_loop()
    for reader in events:
        reader.close()
    for proc, (tasks, _) in busy.items():
        if proc.is_alive():
            tasks.put(None)
    # One grace period for them all, not one each: waited for in turn, workers stuck on a
    # slow page (a struggling service, a long Retry-After) held a cancelled run (the CLI's
    # Ctrl-C) 10 s a worker. A worker killed then resumes from its checkpoint on a rerun.
    deadline = loop.time() + STOP_GRACE
    for proc in busy:
        await loop.run_in_executor(None, proc.join, max(0.0, deadline - loop.time()))
        if proc.is_alive():
            proc.kill()
            await loop.run_in_executor(None, proc.join, 5)
    bar.close()
    stopped(manifest.shards)  # its workers stopped with it, or killed
    await manifest_writes.write()


@contextlib.contextmanager
def _ctrl_c_held() -> Iterator[None]:
    """SIGINT blocked in this thread while a worker starts: the worker keeps the block for
    its life, and this process gets a Ctrl-C of that moment as soon as the block ends.

    A terminal's Ctrl-C reaches every process of its group: a worker still starting printed
    a raw KeyboardInterrupt traceback from its imports. The coordinator stops its workers
    itself (it closes their pipes and tells them to end).
    """
    if not hasattr(signal, "pthread_sigmask"):  # Windows: no process groups to reach them
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


def _replace_the_dead(
    busy: dict[BaseProcess, tuple[Any, int | None]],
    todo: dict[int, ShardOutcome],
    waiting: list[int],
    tries: dict[int, int],
    finish: Any,
    spawn: Any,
) -> None:
    """Hand a dead worker's shard back out (to a new worker), or fail it after MAX_TRIES.

    A worker whose shard is failed is replaced too while shards wait to be handed out: they
    waited for ever once every worker had died so (one worker, and a shard that kills it).
    """
    for proc, (_, index) in list(busy.items()):
        if proc.is_alive() or index is None or index not in todo:
            continue
        del busy[proc]
        if tries.get(index, 0) >= MAX_TRIES:
            todo[index].status = "failed"
            todo[index].error = f"its worker died {MAX_TRIES} times"
            todo[index].retries = None  # its runs' died with them: not counted
            finish(index)
            if waiting:
                spawn()
        else:
            waiting.insert(0, index)
            spawn()
