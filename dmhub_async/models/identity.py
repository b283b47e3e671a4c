"""Identities: the ``(type, value)`` pairs that find a customer, and their bindings."""

from __future__ import annotations

import attrs

__all__ = ["CustomerIdentity", "Identity"]


# Not cache_hash=True: attrs keeps a cached hash as an int subclass made at the first hash, and
# that costs more than it saves. lookup_many hashes an identity twice, lookup_iter about eight
# times, lookup() never: canned, 82.9k -> 79.8k and 118.1k -> 116.2k instructions a lookup.
@attrs.frozen
class Identity:
    """An identity such as ``Identity("wechat", "o123")``; hashable, keyed on type and value.

    ``name`` is a display label only: it takes no part in equality or hashing, so
    ``Identity("wechat", "o1") == Identity("wechat", "o1", name="x")`` and both find the same
    entry of a ``lookup_many`` result. The service, too, identifies a customer by type and value.
    """

    type: str
    value: str
    name: str | None = attrs.field(default=None, eq=False)


@attrs.frozen
class CustomerIdentity:
    """An identity bound to a customer, as the identity endpoints return it."""

    customer_id: int
    type: str
    value: str
    name: str | None = None

    @property
    def identity(self) -> Identity:
        """The bound identity, without the customer."""
        return Identity(self.type, self.value, self.name)
