"""A page of bytes to models through msgspec's typed decode, when msgspec is installed.

msgspec (the optional ``fast`` extra) decodes JSON bytes straight into typed records in C, so
a page costs little more than parsing it (benchmarks/bench_converter.py). It knows none of our
promises, so it is only asked for what it does exactly: each model gets a msgspec Struct with
the model's wire names and strict types (text, integers of any size, booleans) that refuses
unknown keys. Timestamps in RFC 3339's form are read by msgspec too (a fraction past
microseconds rounded to the nearest, half up, as every other path of the SDK reads it:
``scalars.from_iso``), then put in UTC; one in another form (``20240102T030405Z``, a
fraction after a comma) is refused and its record read by the hook. A decimal field is read
by msgspec itself, as every digit the service sent (``12345678901234567.89``; ``1.50`` keeps
its zero, where the lenient way, through a float, gives the equal ``Decimal("1.5")``); a float in an
unknown key goes through ``_json.exact_number``, as the lenient way's does.

An unknown key (a field the service added: the simulator's ``tagCount`` is on every record)
is learnt: the reader's Struct then names it too, typed as any JSON, and its value goes to
``extra``; the next pages are read in one go again (reading every such record the lenient
way cost twice the lenient way itself). Up to ``MAX_UNKNOWN_KEYS`` are learnt; ``extra``
equals the hook's, its keys perhaps in another order when a record has several.

A record msgspec still refuses (a number sent as text, a form it does not read) is read the
lenient way, from its own bytes, by the converter's hook; a record the hook refuses too sends
the whole page the lenient way, :func:`page_reader`'s ``fallback``, whose error names the
record and the field.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any, Final, Generic, TypeVar, cast

import attrs
import cattrs

from .. import _json
from ..models import Gender
from .codegen import make_page_build_fn, make_tuple_build_fn
from .names import wire_names, wire_order

try:
    import msgspec
except ImportError:  # pragma: no cover - the fast extra is not installed
    msgspec = None  # type: ignore[assignment]
else:
    if not _json.HAS_MSGSPEC:  # pragma: no cover - too old for the readers: _json decides
        msgspec = None  # type: ignore[assignment]

T = TypeVar("T")

PageReader = Callable[[bytes], tuple[list[T], dict[str, Any]]]

#: What msgspec is asked to check, per model field type.
_STRICT_TYPES: Final[dict[Any, Any]] = {
    str | None: str | None,
    int | None: int | None,
    bool | None: bool | None,
    datetime | None: datetime | None,  # RFC 3339, read in C; other forms by the hook
    Decimal | None: Decimal | None,  # a number's every digit (a float would round past 15)
    int | str | None: int | str | None,
    dict[str, Any]: dict[str, Any] | None,
    Gender: Any,  # the lenient gender is read by the build function
}


def wire_struct(cls: type[Any], unknown: tuple[str, ...] = ()) -> Any:
    """The msgspec Struct of ``cls``'s wire record, or None (no msgspec, or a field type it
    is not asked to check).

    ``unknown``: wire keys the model does not know that the record may hold too (any JSON,
    UNSET when absent), after the model's fields: what goes to ``extra``.
    """
    if msgspec is None:
        return None
    attrs.resolve_types(cls)
    declared = attrs.fields_dict(cls)
    fields = [declared[name] for name in wire_order(cls)]  # make_tuple_build_fn's order
    if any(a.type not in _STRICT_TYPES for a in fields):
        return None
    extra = {f"unknown_{i}": name for i, name in enumerate(unknown)}
    return msgspec.defstruct(
        f"Wire{cls.__name__}",
        [
            *((a.name, _STRICT_TYPES[a.type], None) for a in fields),
            *((field, Any, msgspec.UNSET) for field in extra),
        ],
        kw_only=True,
        forbid_unknown_fields=True,
        rename={**wire_names(cls), **extra},
        gc=False,  # read, turned into a model and dropped: never in a cycle (see page_reader)
    )


class Models(Generic[T]):
    """How :func:`page_reader` makes its models: built whole, as they are read (the default).

    ``page(unknown, struct)``: the function from a page's typed records (of ``struct``, which
    holds the model's fields and the learnt ``unknown`` keys) to their models; ``one(struct)``
    the function from one such record (no unknown key) to its model; ``row(data)`` the model
    of a record decoded as JSON data (one msgspec refused). Each raises for a value it refuses.
    """

    def __init__(self, cls: type[T], converter: cattrs.Converter) -> None:
        self.cls = cls
        self.converter = converter
        self.hook = converter.get_structure_hook(cls)

    def page(self, unknown: tuple[str, ...], struct: Any) -> Callable[[Any], list[T]]:
        return make_page_build_fn(
            self.cls, self.converter, msgspec.structs.astuple, unknown, msgspec.UNSET
        )

    def one(self, struct: Any) -> Callable[[Any], T]:
        build = make_tuple_build_fn(self.cls, self.converter)
        astuple = msgspec.structs.astuple
        return lambda record: cast(T, build(astuple(record)))

    def row(self, data: Any) -> T:
        return cast(T, self.hook(data, self.cls))


def page_reader(
    cls: type[T],
    converter: cattrs.Converter,
    key: str,
    page_keys: tuple[str, ...],
    fallback: Callable[[bytes], tuple[list[T], dict[str, Any]]],
    models: Models[T] | None = None,
) -> Callable[[bytes], tuple[list[T], dict[str, Any]]]:
    """A function from a page's bytes to its models (the list under ``key``) and other keys.

    Without msgspec, ``fallback`` itself; with it, msgspec first (unknown keys learnt, see
    above), a record it refuses by the converter's hook, and ``fallback`` for a page that is
    still not read. Of the page's other
    keys, msgspec gives the ``page_keys`` (those the callers read: a decode of the page that
    kept every key cost a sixth of the whole); ``fallback`` gives them all. ``models``: how
    the models are made of the typed records (:class:`Models`, the default: built whole).
    """
    struct = wire_struct(cls)
    if struct is None:
        return fallback
    unset = msgspec.UNSET
    make = models if models is not None else Models(cls, converter)

    def page_decoder(unknown: tuple[str, ...]) -> tuple[Any, Any]:
        row_struct = wire_struct(cls, unknown)
        page_struct = msgspec.defstruct(
            f"Wire{cls.__name__}Page",
            [
                (key, list[row_struct] | None, None),  # type: ignore[valid-type]
                *((k, Any, unset) for k in page_keys),
            ],
            kw_only=True,
            gc=False,
        )
        return msgspec.json.Decoder(page_struct, float_hook=_json.exact_number), row_struct

    # The unknown keys met so far (a service that adds a field sends it on every record) and
    # the page decoder that reads them too: learnt once, then every page is read in one go.
    build = make.one(struct)  # no unknown key
    decoder, row_struct = page_decoder(())
    typed: tuple[tuple[str, ...], Any, Callable[[Any], list[T]]] = (
        (),
        decoder,
        make.page((), row_struct),
    )
    raw_page_decoder = msgspec.json.Decoder(dict[str, msgspec.Raw])
    raw_rows_decoder = msgspec.json.Decoder(list[msgspec.Raw] | None)
    row_decoder = msgspec.json.Decoder(struct, float_hook=_json.exact_number)
    value_decoder = msgspec.json.Decoder(float_hook=_json.exact_number)

    def read_row(raw: Any) -> T:
        try:
            return build(row_decoder.decode(raw))
        except _REFUSED:
            return make.row(_json.loads(bytes(raw)))

    def read_typed(body: bytes) -> tuple[list[T], dict[str, Any]] | None:
        nonlocal typed
        while True:
            unknown, decoder, build_page = typed
            try:
                page = decoder.decode(body)
            except msgspec.ValidationError as err:
                found = _UNKNOWN_KEY.match(str(err))
                if found is None or len(unknown) >= MAX_UNKNOWN_KEYS:
                    return None
                learnt = (*unknown, found.group(1))
                # The build of the learnt keys too: their values go straight to extra.
                decoder, row_struct = page_decoder(learnt)
                typed = (learnt, decoder, make.page(learnt, row_struct))
                continue
            meta = {k: v for k in page_keys if (v := getattr(page, k)) is not unset}
            return build_page(getattr(page, key) or ()), meta

    def read_page(body: bytes) -> tuple[list[T], dict[str, Any]]:
        try:
            read = read_typed(body)
            if read is not None:
                return read
        except _REFUSED:
            pass
        try:  # a record msgspec refuses: each record on its own
            raw_page = raw_page_decoder.decode(body)
            raw = raw_page.pop(key, None)
            rows = [] if raw is None else raw_rows_decoder.decode(raw) or ()
            return [read_row(row) for row in rows], {
                k: value_decoder.decode(v) for k, v in raw_page.items()
            }
        except _REFUSED:
            return fallback(body)

    return read_page


#: Unknown record keys a page reader learns to read in its typed decode; beyond them, records
#: with others are read one by one.
MAX_UNKNOWN_KEYS: Final = 16
#: msgspec's error for a key its Struct does not name.
_UNKNOWN_KEY: Final = re.compile(r"Object contains unknown field `(.*)` - at `\$\.")


#: What msgspec (its errors are ValueErrors), a build or a hook raise for a record they refuse.
_REFUSED: Final = (ValueError, TypeError, ArithmeticError, AttributeError, KeyError, RecursionError)
