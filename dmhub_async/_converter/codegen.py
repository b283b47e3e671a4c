"""The generated structure hook of the models with an ``extra`` dict (Customer, statistics).

These hooks are on the hot path of every walk and export, so they are not cattrs's generic
generated functions: :func:`make_fast_structure_fn` generates, once per class and converter,
straight-line code that reads every wire key at once (``operator.itemgetter``; ``dict.get`` one
by one for a sparse row), converts each value inline (no call at all for a null or a value of
the expected JSON type; on Python >= 3.11 timestamps go straight to ``datetime.fromisoformat``,
and a row it refuses is read again by the lenient expressions) and sets the slots of a fresh
instance. Keys the model does not know land in ``extra``, and so does a gender that is none of
the known ones (the field reads ``UNKNOWN``); what a strict converter makes of that is the
converter's business, not the generated code's. ``benchmarks/bench_converter.py`` measures it.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any, Final, cast

import attrs
import cattrs

from ..models import Gender
from . import scalars
from .names import wire_names, wire_order

# Inline expressions per field type, on the local `{v}` holding the wire value: the common case
# (the exact JSON type, or null) costs no call; anything else goes to the lenient scalar.
_INLINE: Final[dict[Any, str]] = {
    str | None: "{v} if {v} is None or type({v}) is str else _to_str({v})",
    int | None: "{v} if {v} is None or type({v}) is int else _to_int({v})",
    bool | None: "{v} if {v} is None or type({v}) is bool else _to_bool({v})",
    datetime | None: "None if {v} is None else _to_datetime({v})",
    Decimal | None: "None if {v} is None else _Decimal(_repr({v})) if type({v}) is float"
    " else _Decimal({v}) if type({v}) is int else _to_decimal({v})",
    int | str | None: "{v}",
    dict[str, Any]: "{v} if type({v}) is dict else _to_dict({v})",
}

#: Python >= 3.11: ``fromisoformat`` reads the contract's ``...Z`` form in C and gives
#: ``timezone.utc`` itself for it, so a row of well-formed timestamps parses without a Python
#: call. A timestamp it refuses raises, and the row is read again with the lenient expressions;
#: one of 23 characters or more (room for a fraction past microseconds, which ``fromisoformat``
#: drops and ``scalars.from_iso`` rounds, as msgspec does) or with an offset is read by them.
_INLINE_FAST: Final[dict[Any, str]] = {
    datetime | None: "None if {v} is None"
    " else d if len({v}) < 23 and (d := _fromiso({v})).tzinfo is _UTC else _to_datetime({v})"
}

_NAMESPACE: Final[dict[str, Any]] = {
    "_new": object.__new__,
    "_to_str": scalars.to_str,
    "_to_int": scalars.to_int,
    "_to_bool": scalars.to_bool,
    "_to_decimal": scalars.to_decimal,
    "_Decimal": Decimal,
    "_repr": repr,
    "_to_dict": scalars.to_dict,
    "_to_datetime": scalars.to_datetime,
    "_to_utc": scalars.to_utc,
    "_fromiso": datetime.fromisoformat,
    "_UTC": scalars.UTC,
    "_to_gender": scalars.to_gender,
    "_GENDERS": scalars.GENDERS,
    "_UNKNOWN": Gender.UNKNOWN,
}


def _read_dict(
    local: list[str], fields: list[attrs.Attribute[Any]], names: dict[str, str]
) -> list[str]:
    """Read a wire dict: every key at once, or one by one for a sparse row."""
    return [
        "    try:",
        f"        ({', '.join(local)},) = _get_all(o)",
        "        complete = True",
        "    except KeyError:",
        "        g = o.get",
        *(f"        {v} = g({names[a.name]!r})" for v, a in zip(local, fields, strict=True)),
        "        complete = False",
    ]


# All known keys present and no more keys than that: nothing unknown (the usual case).
_EXTRA_OF_DICT: Final = [
    "    if (complete and len(o) == _N_KNOWN) or _KNOWN.issuperset(o):",
    "        extra = {}",
    "    else:",
    "        extra = {k: o[k] for k in o if k not in _KNOWN}",
]


def _source(
    name: str,
    fields: list[attrs.Attribute[Any]],
    names: dict[str, str],
    ns: dict[str, Any],
    converter: cattrs.Converter,
    inline: dict[Any, str],
    *,
    read: list[str] | None = None,
    extra: list[str] = _EXTRA_OF_DICT,
    preset: frozenset[str] = frozenset(),
    into: bool = False,
) -> list[str]:
    """The source lines of one generated structure function (see make_fast_structure_fn).

    ``read`` sets the locals ``v0``... from the argument ``o`` (default: a wire dict), ``extra``
    sets ``extra`` (default: the keys of the dict the model does not know). ``read`` may set
    the ``preset`` fields of ``self`` itself, as they are. ``into``: a function of ``(self,
    o)`` that sets the fields of the instance it is given (``extra`` last), not a new one.
    """
    local = [f"v{i}" for i in range(len(fields))]
    lines = [
        f"def {name}(self, o):" if into else f"def {name}(o, _=None):",
        *(() if into else ("    self = _new(_cls)",)),
        *(read if read is not None else _read_dict(local, fields, names)),
    ]
    gender = None
    for i, (v, a) in enumerate(zip(local, fields, strict=True)):
        if a.name in preset:
            continue
        if a.type is Gender:
            gender = (v, names[a.name])
            lines += [
                f"    gender = _GENDERS.get({v}) if {v} is None or type({v}) is int"
                f" else _to_gender({v})",
                f"    self.{a.name} = _UNKNOWN if gender is None else gender",
            ]
            continue
        template = inline.get(a.type)
        if template is not None:
            expr = template.replace("{v}", v)
        else:
            # Any other type: the converter's own hook; null or missing gives the default.
            ns[f"_hook{i}"] = converter.get_structure_hook(a.type)
            ns[f"_type{i}"] = a.type
            ns[f"_default{i}"] = a.default
            default = (
                f"_default{i}.factory()"
                if isinstance(a.default, attrs.Factory)  # type: ignore[arg-type]
                else f"_default{i}"
            )
            expr = f"{default} if {v} is None else _hook{i}({v}, _type{i})"
        lines.append(f"    self.{a.name} = {expr}")
    lines += extra
    if gender is not None:
        # An unmappable gender keeps its raw value, so nothing the service sent is lost.
        lines += ["    if gender is None:", f"        extra[{gender[1]!r}] = {gender[0]}"]
    lines += ["    self.extra = extra", "    return self"]
    return lines


def make_fast_structure_fn(
    cls: type[Any], converter: cattrs.Converter, *, into: bool = False
) -> Callable[[Any, Any], Any]:
    """Generate the structure hook of an attrs model that has an ``extra`` dict field.

    The generated function reads every wire key at once with an ``itemgetter`` (a row with all
    the fields, the usual case) or one by one with ``dict.get`` (a ``select=`` or sparse row:
    missing and null give the default), converts each inline, sets the slots of
    ``object.__new__(cls)``, and collects keys it does not know into ``extra``. It never calls
    ``__init__``, so the model must have no validators, converters or ``__attrs_post_init__``
    (checked here).

    ``into``: the function of ``(self, o)`` that sets the fields of a given instance of
    ``cls`` instead (``extra`` last; a field it refuses leaves the later ones unset).
    """
    attrs.resolve_types(cls)
    fields = [a for a in attrs.fields(cls) if a.name != "extra"]
    if hasattr(cls, "__attrs_post_init__") or any(
        a.validator is not None or a.converter is not None for a in fields
    ):
        raise TypeError(f"{cls.__name__} has validators or converters: no fast structure hook")
    names = wire_names(cls)
    known = frozenset(names.values())
    ns: dict[str, Any] = {
        **_NAMESPACE,
        "_cls": cls,
        "_KNOWN": known,
        "_N_KNOWN": len(known),
        "_get_all": operator.itemgetter(*(names[a.name] for a in fields)),
    }
    lenient = _source("lenient", fields, names, ns, converter, _INLINE, into=into)
    if scalars.PY311:
        fast = _source("fast", fields, names, ns, converter, {**_INLINE, **_INLINE_FAST}, into=into)
        # Anything the fast expressions refuse is read again by the lenient ones.
        lines = [
            *lenient,
            fast[0].replace("def fast(", "def structure(", 1),
            "    try:",
            *(f"    {line}" for line in fast[1:]),
            "    except (ValueError, TypeError):",
            "        return lenient(self, o)" if into else "        return lenient(o)",
        ]
    else:
        lines = [line.replace("def lenient(", "def structure(", 1) for line in lenient]
    source = "\n".join(lines) + "\n"
    exec(compile(source, f"<dmhub_async structure {cls.__name__}>", "exec"), ns)
    fn = ns["structure"]
    fn.__doc__ = f"Structure a wire {cls.__name__} (generated by make_fast_structure_fn)."
    return cast("Callable[[Any, Any], Any]", fn)


#: Values msgspec has already typed (see .wire_struct): text, integers and booleans are done,
#: decimals too (a ``Decimal`` of every digit sent, from a number or a number's text) but for
#: NaN and the infinities, timestamps too but for their zone (aware UTC here, unless one named
#: another offset or none).
_INLINE_TYPED: Final[dict[Any, str]] = {
    str | None: "{v}",
    int | None: "{v}",
    bool | None: "{v}",
    datetime | None: "{v} if {v} is None or {v}.tzinfo is _UTC else _to_utc({v})",
    # msgspec reads the text "NaN" or "-Infinity" as such a Decimal: refused, by the hook
    Decimal | None: "{v} if {v} is None or {v}.is_finite() else _to_decimal({v})",
    int | str | None: "{v}",
    dict[str, Any]: "{} if {v} is None else {v}",
}


def _tuple_build_lines(
    cls: type[Any],
    converter: cattrs.Converter,
    unknown: tuple[str, ...],
    unset: object,
    tuple_of: str,
    into: bool = False,
) -> tuple[list[str], dict[str, Any]]:
    """The source of ``build(o)`` (see :func:`make_tuple_build_fn`), reading the fields from
    the expression ``tuple_of`` (of ``o``), and its namespace."""
    attrs.resolve_types(cls)
    fields = [a for a in attrs.fields(cls) if a.name != "extra"]
    names = wire_names(cls)
    ns: dict[str, Any] = {**_NAMESPACE, "_cls": cls}
    # A field msgspec typed fully is set straight from the tuple, in the one unpacking (a local
    # and a statement less each: 36 of Customer's 41 fields, 10 of a statistics item's 13); the
    # others go through a local.
    preset = frozenset(a.name for a in fields if _INLINE_TYPED.get(a.type) == "{v}")
    local = {a.name: f"v{i}" for i, a in enumerate(fields)}
    # In the order of the Struct's fields (.wire_struct: the order the service sends them).
    targets = [f"self.{a}" if a in preset else local[a] for a in wire_order(cls)]
    targets += [f"u{i}" for i in range(len(unknown))]
    ns["_UNSET"] = unset
    lines = _source(
        "build",
        fields,
        names,
        ns,
        converter,
        _INLINE_TYPED,
        read=[f"    ({', '.join(targets)},) = {tuple_of}"],
        # Straight into the one dict: no slicing of the tuple, no second pass over the models
        # (a 1,000-customer page, 10% with unknown keys: 70.2M -> 65.2M instructions,
        # benchmarks/HISTORY.md, issue 15's sixth round).
        extra=[
            "    extra = {}",
            *(
                line
                for i, name in enumerate(unknown)
                for line in (f"    if u{i} is not _UNSET:", f"        extra[{name!r}] = u{i}")
            ),
        ],
        preset=preset,
        into=into,
    )
    return lines, ns


def make_tuple_build_fn(
    cls: type[Any],
    converter: cattrs.Converter,
    unknown: tuple[str, ...] = (),
    unset: object = None,
) -> Callable[[Any], Any]:
    """Generate the function that builds a model from the tuple of a typed wire record.

    The tuple holds the fields of ``cls`` but ``extra`` in the order the service sends them
    (:func:`.names.wire_order`), already of their types (a msgspec Struct's ``astuple``, see
    :mod:`.wire_struct`), so only what that typing does not say is done here: timestamps put
    in UTC, a null ``attr`` to ``{}``, the lenient gender. A value it refuses raises (the
    caller reads that page the lenient way).

    ``unknown``: the wire keys the model does not know that follow the fields in the tuple,
    each ``unset`` where the record did not hold it; those it held start ``extra``, in this
    order, before a gender the build does not know (as the lenient hook would order them).
    """
    lines, ns = _tuple_build_lines(cls, converter, unknown, unset, "o")
    exec(compile("\n".join(lines) + "\n", f"<dmhub_async build {cls.__name__}>", "exec"), ns)
    return cast("Callable[[Any], Any]", ns["build"])


def make_tuple_fill_fn(
    cls: type[Any],
    converter: cattrs.Converter,
    astuple: Callable[[Any], tuple[Any, ...]],
    unknown: tuple[str, ...] = (),
    unset: object = None,
) -> Callable[[Any, Any], Any]:
    """:func:`make_tuple_build_fn`'s build of a typed wire record ``o`` (its tuple taken with
    ``astuple``) into a given instance of ``cls``: ``fill(self, o)`` sets its fields, ``extra``
    last (a value it refuses raises and leaves the later fields unset)."""
    lines, ns = _tuple_build_lines(cls, converter, unknown, unset, "_astuple(o)", into=True)
    ns["_astuple"] = astuple
    exec(compile("\n".join(lines) + "\n", f"<dmhub_async fill {cls.__name__}>", "exec"), ns)
    return cast("Callable[[Any, Any], Any]", ns["build"])


def make_page_build_fn(
    cls: type[Any],
    converter: cattrs.Converter,
    astuple: Callable[[Any], tuple[Any, ...]],
    unknown: tuple[str, ...] = (),
    unset: object = None,
) -> Callable[[Iterable[Any]], list[Any]]:
    """Generate the function that builds the models of a page's typed wire records.

    :func:`make_tuple_build_fn`'s build, each record's tuple taken with ``astuple``, in one
    loop: no call a record (a walk's page of 100 customers: 41k instructions of 4,028k
    fewer, issue 15's thirty-ninth round). A value it refuses raises, as the build does, and
    no model of the page is returned.
    """
    lines, ns = _tuple_build_lines(cls, converter, unknown, unset, "_astuple(o)")
    ns["_astuple"] = astuple
    body = [f"    {line}" for line in lines[1:-1]]  # the build's, but its def and its return
    if lines[-1] != "    return self":  # pragma: no cover - _source's last line
        raise AssertionError(lines[-1])
    source = [
        "def build_page(records):",
        "    models = []",
        "    add = models.append",
        "    for o in records:",
        *body,
        "        add(self)",
        "    return models",
    ]
    code = compile("\n".join(source) + "\n", f"<dmhub_async build_page {cls.__name__}>", "exec")
    exec(code, ns)
    return cast("Callable[[Iterable[Any]], list[Any]]", ns["build_page"])


def has_extra(cls: Any) -> bool:
    """Whether ``cls`` is an attrs model with an ``extra`` dict: the fast hook's models."""
    return attrs.has(cls) and "extra" in attrs.fields_dict(cls)
