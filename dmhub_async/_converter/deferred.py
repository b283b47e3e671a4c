"""Customers structured on their first read: ``list(structure="lazy")``'s models.

A page is decoded as the eager walk decodes it (msgspec's typed records, see .wire_struct;
JSON data without msgspec or for a record it refuses), but no ``Customer`` is built: each
record becomes an instance of :class:`DeferredCustomer`, a ``Customer`` subclass of the same
layout whose ``id`` is set (the walk drops repeats by it) and whose ``extra`` slot holds the
record as decoded. The first read of any other field, or of ``extra``, or a write, an equality,
a ``repr``, a pickle or a copy, builds every field at once with the same generated code the
eager walk runs, and the instance becomes a plain ``Customer`` (its ``__class__`` set back):
from then on it is one in every way, its fields plain slot reads.

A record whose build refuses a value (the eager walk refuses its page, naming the record and
the field) stays deferred: each field is then read on its own, the lenient way, and the one
that is malformed raises :class:`~dmhub_async.ResponseDecodeError` on every read of it, naming
the record's id and the field; its other fields still read.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from typing import Any, Final

import attrs
import cattrs

from .._exceptions import ResponseDecodeError
from .._redact import redact
from ..models import Customer, Gender
from . import scalars
from .codegen import make_fast_structure_fn, make_tuple_fill_fn
from .names import wire_names
from .wire_struct import Models

try:
    import msgspec
except ImportError:  # pragma: no cover - the fast extra is not installed: records are dicts
    msgspec = None  # type: ignore[assignment]

__all__ = ["DeferredCustomer", "DeferredModels", "deferred_rows", "remember_secrets"]

_FIELDS: Final = tuple(a.name for a in attrs.fields(Customer))
_WIRE: Final = wire_names(Customer)
_KNOWN_WIRE: Final = frozenset(_WIRE.values())
_ALL: Final = operator.attrgetter(*_FIELDS)
#: Customer's own slots, set and read without the subclass's hooks.
_EXTRA_SLOT: Final[Any] = Customer.__dict__["extra"]
_ID_SLOT: Final[Any] = Customer.__dict__["id"]
_set_class: Final = object.__setattr__
#: What a build or a field's hook raises for a value it refuses (as .wire_struct's, but for
#: RecursionError: the caller's stack, not the record, which neither walks into; a first use
#: near the limit marked a good record unreadable for good, or said its field malformed).
_REFUSED: Final = (ValueError, TypeError, ArithmeticError, AttributeError, KeyError)

#: The secrets lazy pages were read with, the latest ``_KEPT_SECRETS`` of them, which a
#: malformed field's error is masked against: it is made when the field is read, maybe after
#: the walk's client is closed and collected, and it quoted the token the value held (a service
#: echoing the URL) as is, no live client knowing it any longer.
_page_secrets: dict[str, None] = {}
_KEPT_SECRETS: Final = 256


def remember_secrets(secrets: Iterable[str | None]) -> None:
    """Keep ``secrets``, those a lazy page is read with (its client's token and secret), as the
    latest remembered. Only the walk's own: each page remembered the secrets of every live
    client, which cost a page 40 us with 100 clients alive and 540 us with 1,000, and past 256
    of them pushed out the token of a walk whose client was gone."""
    known = _page_secrets
    for secret in secrets:
        if secret:
            known.pop(secret, None)  # the latest last: the last pushed out
            known[secret] = None
    if len(known) > _KEPT_SECRETS:
        for old in list(known)[:-_KEPT_SECRETS]:
            known.pop(old, None)


#: The type of a pending record (a msgspec Struct of the page reader's, or a dict) -> the
#: function that sets every field of a Customer from it.
_FILLS: dict[type, Callable[[Any, Any], Any]] = {}


class _Unreadable:
    """A deferred record whose build refused a value: the record as wire data (its fields
    read one by one) and ``extra`` (None until read or set)."""

    __slots__ = ("extra", "row")

    def __init__(self, row: dict[str, Any]) -> None:
        self.row = row
        self.extra: dict[str, Any] | None = None


class DeferredCustomer(Customer):
    """A ``Customer`` not built yet (see the module's docstring); never made by ``__init__``:
    constructing this class (``attrs.evolve`` does) gives a plain ``Customer``.

    Each field but ``id`` is a property here (:func:`_deferred_field`) over Customer's slot:
    its first read, write or delete builds the customer. (A ``__getattr__`` for the slots not
    set cost twice as much a first read: the AttributeError of the slot, then the hook; and
    every read of ``id`` went through the hook.)
    """

    __slots__ = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> Any:
        return Customer(*args, **kwargs)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not Customer and other.__class__ is not DeferredCustomer:
            return NotImplemented
        return bool(_values(self) == _values(other))

    __hash__ = None  # as Customer's: mutable, eq by value

    def __repr__(self) -> str:
        if _build(self):
            return repr(self)
        try:
            values = _values(self)
        except ResponseDecodeError as err:
            return f"<Customer id={self.id!r}, unreadable: {err.description}>"
        return repr(Customer(**dict(zip(_FIELDS, values, strict=True))))

    def __reduce_ex__(self, protocol: Any) -> Any:
        if _build(self):
            return self.__reduce_ex__(protocol)
        # Unreadable: pickled as the Customer of its fields, the malformed one raising.
        return Customer(**dict(zip(_FIELDS, _values(self), strict=True))).__reduce_ex__(protocol)


def _values(obj: Any) -> Any:
    """Every field of ``obj`` (``_ALL``); its id deleted said as of the eager customer: the id's
    slot named the private class ("'DeferredCustomer' object has no attribute 'id'")."""
    if obj.__class__ is DeferredCustomer and not hasattr(obj, "id"):
        raise AttributeError(_NO_ID_WORDS, name="id", obj=obj)
    return _ALL(obj)


def _no_id_words() -> str:
    """What reading the id of a ``Customer`` without one says (the interpreter's words)."""
    try:
        _ID_SLOT.__get__(object.__new__(Customer))
    except AttributeError as err:
        return str(err)
    raise AssertionError("a new Customer holds an id")  # pragma: no cover


_NO_ID_WORDS: Final = _no_id_words()


def _deferred_field(name: str) -> property:
    """The property of field ``name`` on DeferredCustomer: the customer built, then the slot's;
    of a record its build refused, the field read alone (:func:`_read_field`)."""
    slot: Any = Customer.__dict__[name]
    unreadable_extra = name == "extra"

    def get(self: Any) -> Any:
        if _build(self):
            return slot.__get__(self)
        if unreadable_extra:
            unreadable: _Unreadable = _EXTRA_SLOT.__get__(self)
            if unreadable.extra is None:
                unreadable.extra = _extra_of(unreadable.row)
            return unreadable.extra
        try:
            return slot.__get__(self)  # read alone before
        except AttributeError:
            pass
        return _read_field(self, name)  # not in the except block: no AttributeError as context

    def set(self: Any, value: Any) -> None:
        if _build(self) or not unreadable_extra:
            slot.__set__(self, value)
        else:
            _EXTRA_SLOT.__get__(self).extra = value

    def delete(self: Any) -> None:
        if _build(self) or not unreadable_extra:
            slot.__delete__(self)
        else:
            _EXTRA_SLOT.__get__(self).extra = None

    return property(get, set, delete, f"Customer.{name}, built on the first use.")


for _name in _FIELDS:
    if _name != "id":  # set as the record is read: the walk drops repeats by it
        setattr(DeferredCustomer, _name, _deferred_field(_name))
del _name


def _build(obj: Any) -> bool:
    """Build every field of ``obj``: True when it is now a plain ``Customer`` (or was one),
    False when the record holds a value its build refused (each field then read alone)."""
    if obj.__class__ is Customer:
        return True
    pending = _EXTRA_SLOT.__get__(obj)
    if pending.__class__ is _Unreadable:
        return False
    fill = _FILLS[pending.__class__]
    # The id as the caller left it: set with the page and no property, so written or deleted
    # without a build, which sets it from the record again (a write was lost).
    try:
        ident = obj.id  # a slot's read and write: 0.2k instructions a first use (a finally
    except AttributeError:  # calling the slot descriptor's __get__/__set__ counted 2.5k)
        ident = _NO_ID
    try:
        _set_class(obj, "__class__", Customer)
        fill(obj, pending)  # sets extra last: the pending record stays there until it works
        _keep_id(obj, ident)
    except _REFUSED:
        _set_class(obj, "__class__", DeferredCustomer)
        _EXTRA_SLOT.__set__(obj, _Unreadable(_as_row(pending)))
        _keep_id(obj, ident)
        return False
    except BaseException:  # a Ctrl+C, a task cancelled in a signal handler: built at next use
        # The record put back: once the build had set extra, its last field, and before it
        # returned, extra was the built one, which the next use built as the record (every
        # field None). Every step of the build is in this try: nothing half done is seen.
        _EXTRA_SLOT.__set__(obj, pending)
        _set_class(obj, "__class__", DeferredCustomer)
        _keep_id(obj, ident)
        raise
    return True


#: An id deleted before the first use (:func:`_build`).
_NO_ID: Final = object()


def _keep_id(obj: Any, ident: Any) -> None:
    """Put back the id the caller left (``_NO_ID``: deleted) after a build."""
    if ident is not _NO_ID:
        obj.id = ident
    elif hasattr(obj, "id"):
        del obj.id


def _as_row(pending: Any) -> dict[str, Any]:
    """A pending record as wire data: a typed record's set fields under their wire names."""
    if isinstance(pending, dict):
        return pending
    unset = msgspec.UNSET
    return {
        name: value
        for name, value in zip(
            pending.__struct_encode_fields__, msgspec.structs.astuple(pending), strict=True
        )
        if value is not unset
    }


def _extra_of(row: dict[str, Any]) -> dict[str, Any]:
    """``extra`` as the converter's hook makes it: the keys it does not know, then a gender
    that is no known one."""
    extra = {k: v for k, v in row.items() if k not in _KNOWN_WIRE}
    gender = row.get(_WIRE["gender"])
    if scalars.to_gender(gender) is None:  # kept as sent, as the hook keeps it
        extra[_WIRE["gender"]] = gender
    return extra


def _read_field(obj: Any, name: str) -> Any:
    """One field of an unreadable record, the lenient way, kept once read; a malformed one
    raises ResponseDecodeError naming the record and the field."""
    unreadable: _Unreadable = _EXTRA_SLOT.__get__(obj)
    try:
        read = _field_value(name, unreadable.row.get(_WIRE[name]))
    except _REFUSED as err:
        problem = str(err)
        problem = problem if len(problem) <= 200 else problem[:200] + "..."
        record = getattr(obj, "id", None)  # the caller's, who may have written or deleted it
        where = "a record without an id" if record is None else f"the record with id {record}"
        text = redact(
            "the answer is not a page of customers: cannot read a Customer from the response:"
            f" {where}, field {_WIRE[name]!r}: {problem}",
            _page_secrets,
        )
    else:
        Customer.__dict__[name].__set__(obj, read)
        return read
    # Raised outside the except block, and the record and the words quoting its value out of
    # this frame's variables, which an error tracker records (resources._pages.decode): a
    # service may have filled the value with the URL, the token in it.
    del unreadable, problem
    raise ResponseDecodeError(text, status=200, description=text)


def _field_value(name: str, value: Any) -> Any:
    """A field's value of its wire value, as the converter's hook reads it."""
    if name == "gender":
        found = scalars.to_gender(value)
        return Gender.UNKNOWN if found is None else found
    if value is None:  # the field's default, a new one of a factory's (attr: {})
        default: Any = attrs.fields_dict(Customer)[name].default
        factory = getattr(default, "factory", None)
        return default if factory is None else factory()
    return _field_hooks[name](value)


#: Each field's reading of one wire value (not null), the converter's: filled by DeferredModels.
_field_hooks: dict[str, Callable[[Any], Any]] = {}


def _field_hook(converter: cattrs.Converter, kind: Any) -> Callable[[Any], Any]:
    hook = converter.get_structure_hook(kind)
    return lambda value: hook(value, kind)


class DeferredModels(Models[Customer]):
    """:class:`.wire_struct.Models` making :class:`DeferredCustomer`\\ s: no field built."""

    def __init__(self, converter: cattrs.Converter) -> None:
        super().__init__(Customer, converter)
        if not _FILLS:
            _FILLS[dict] = make_fast_structure_fn(Customer, converter, into=True)
            for a in attrs.fields(Customer):
                _field_hooks[a.name] = _field_hook(converter, a.type)

    def page(self, unknown: tuple[str, ...], struct: Any) -> Callable[[Any], list[Customer]]:
        _FILLS[struct] = make_tuple_fill_fn(
            Customer, self.converter, msgspec.structs.astuple, unknown, msgspec.UNSET
        )
        return deferred_records

    def one(self, struct: Any) -> Callable[[Any], Customer]:
        self.page((), struct)
        return lambda record: deferred_records((record,))[0]

    def row(self, data: Any) -> Customer:
        return deferred_rows([data])[0]


def deferred_records(records: Iterable[Any]) -> list[Customer]:
    """Typed wire records (msgspec Structs of a filled type) as pending customers."""
    models: list[Customer] = []
    add = models.append
    new = object.__new__
    cls = DeferredCustomer
    set_id = _ID_SLOT.__set__
    set_pending = _EXTRA_SLOT.__set__
    for record in records:
        obj = new(cls)
        set_id(obj, record.id)
        set_pending(obj, record)
        add(obj)
    return models


def deferred_rows(rows: list[Any]) -> list[Customer]:
    """Rows decoded as JSON data as pending customers; ValueError for a row that is no object
    or whose id is no integer (the walk needs it at once: refused with the page)."""
    models: list[Customer] = []
    for index, row in enumerate(rows):
        if not isinstance(row, dict):
            raise ValueError(
                f"cannot read a Customer from the response: record {index} is not an object"
            )
        try:
            customer_id = scalars.to_int(row.get("id"))
        except _REFUSED as err:
            raise ValueError(
                f"cannot read a Customer from the response: record {index}, field 'id': {err}"
            ) from None
        obj = object.__new__(DeferredCustomer)
        _ID_SLOT.__set__(obj, customer_id)
        _EXTRA_SLOT.__set__(obj, row)
        models.append(obj)
    return models
