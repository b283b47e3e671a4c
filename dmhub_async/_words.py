"""Counts said in words: ``1 customer``, ``2 customers``, ``1,204 retries``."""

from __future__ import annotations

__all__ = ["counted", "noun"]


def noun(count: int, one: str, many: str | None = None) -> str:
    """``one`` when ``count`` is one, else ``many`` (``one`` + "s" when not given)."""
    return one if count == 1 else many or one + "s"


def counted(count: int, one: str, many: str | None = None) -> str:
    """``count`` of ``one``, its thousands separated: reports said "1 customers", "1 parts",
    "1 retries"."""
    return f"{count:,} {noun(count, one, many)}"
