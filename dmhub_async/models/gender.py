"""The customer's gender, as the contract codes it."""

from __future__ import annotations

import enum

__all__ = ["Gender"]


class Gender(enum.IntEnum):
    """A customer's gender: the wire's 0 or null is ``UNKNOWN``, 1 ``MALE``, 2 ``FEMALE``."""

    UNKNOWN = 0
    MALE = 1
    FEMALE = 2
