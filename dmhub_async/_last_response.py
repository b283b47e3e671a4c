"""``dm.last_response``: the latest answer each task received, and through which session.

Each task gets a slot of its own in a context variable, set once and then written in place.
Setting the variable anew on every answer would pin every earlier answer (a list's page with
all its records) in each context snapshot taken since: asyncio keeps a snapshot in every
timer handle, and a cancelled timer (aiohttp's per-request timeouts) stays in the loop's heap
until the loop prunes it, so a walk kept up to a hundred pages alive and gave the garbage
collector that much more to scan, page after page. A slot holds one answer.
"""

from __future__ import annotations

import asyncio
import contextvars
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["last_response", "remember_response"]


class _Slot:
    """One task's latest answer and the session it came through; and, once the task has used
    another session, each other live session's latest answer."""

    __slots__ = ("earlier", "owner", "response", "session")

    def __init__(self, owner: weakref.ref[asyncio.Task[Any]] | None) -> None:
        self.owner = owner
        #: The session of ``response``, by a weak reference: its id() could be a new client's
        #: once it was gone, which then showed the dead client's answer (another tenant's).
        self.session: weakref.ref[Any] | None = None
        self.response: Any = None
        self.earlier: weakref.WeakKeyDictionary[Any, Any] | None = None

    def belongs_to(self, task: asyncio.Task[Any] | None) -> bool:
        return (self.owner() if self.owner is not None else None) is task


_slot: contextvars.ContextVar[_Slot | None] = contextvars.ContextVar(
    "dmhub_async_last_response", default=None
)


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop
        return None


def remember_response(session: object, response: Any) -> None:
    """Keep ``response`` as the calling task's latest, received through ``session``."""
    slot = _slot.get()
    task = asyncio.current_task()  # the request path runs in a loop: no _current_task() guard
    if slot is None or not slot.belongs_to(task):
        # A task's first answer (a task started by another sees its parent's slot: not its own).
        slot = _Slot(weakref.ref(task) if task is not None else None)
        _slot.set(slot)
    current = slot.session
    if current is None or current() is not session:
        # Another client's answer: the one before is kept for its own client (a call through
        # a second client in the same task wiped the first's), while that client lives.
        before = current() if current is not None else None
        if before is not None:
            if slot.earlier is None:
                slot.earlier = weakref.WeakKeyDictionary()
            slot.earlier[before] = slot.response
        slot.session = weakref.ref(session)
    slot.response = response


def last_response(session: object, build: Callable[[tuple[Any, ...]], Any] | None = None) -> Any:
    """The calling task's latest answer if it came through ``session``, else None.

    ``build``: what makes an answer remembered as a tuple (its fields, not yet an object) the
    answer read; kept in its place, so that every read gives the same object.
    """
    slot = _slot.get()
    if slot is None or not slot.belongs_to(_current_task()):
        return None
    current = slot.session
    if current is not None and current() is session:
        response = slot.response
        if build is not None and type(response) is tuple:
            response = slot.response = build(response)
        return response
    if slot.earlier is None:
        return None
    response = slot.earlier.get(session)
    if build is not None and type(response) is tuple:
        response = slot.earlier[session] = build(response)
    return response
