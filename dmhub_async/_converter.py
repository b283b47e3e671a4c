"""The private cattrs converter: camelCase wire JSON <-> snake_case attrs models.

One ``cattrs.Converter`` per process (never the global one), built by :func:`make_converter`.
Its hooks come from factories that rename snake_case to camelCase (``CONTRACT.md``, "Customer
model"), with a small table for the names that do not follow the rule (``orderAMT``,
``identityType``...).

Lenient on what comes in (the module's converter): unknown response fields land in the model's
``extra`` under their wire names, nulls and missing keys give the field's default. Strict (the
test suite's ``make_converter(strict=True)``): an unknown key raises
``cattrs.errors.ForbiddenExtraKeysError``, so drift between the models and the service shows.

The structure hooks of ``Customer`` and ``CustomerStatistics`` are on the hot path of every
export, so they are not cattrs's generic generated functions: :func:`_make_fast_structure_fn`
generates, once per class and converter, straight-line code that reads every wire key at once
(``operator.itemgetter``; ``dict.get`` one by one for a sparse row), converts each value inline
(no call at all for a null or a value of the expected JSON type; on Python >= 3.11 timestamps
go straight to ``datetime.fromisoformat``, and a row it refuses is read again by the lenient
expressions) and sets the slots of a fresh instance. It is registered as the converter's hook
for the class, so the converter stays the single entry point. ``benchmarks/bench_converter.py``
measures it.

Conversions, in and out:
- timestamps: in, ``2017-06-01T12:12:12Z`` (the contract's form), no offset (taken as UTC),
  any ``+hh:mm`` offset, fractional seconds, on every supported Python (3.10's
  ``fromisoformat`` knows neither ``Z`` nor arbitrary fractions); always an aware UTC
  ``datetime``. Out, ``2017-06-01T12:12:12Z`` (``.ffffffZ`` when there are microseconds); a
  naive ``datetime`` is taken as UTC.
- ``Decimal``: in, from a JSON string, int or float, a float through its shortest ``repr`` so
  ``0.1`` gives ``Decimal("0.1")`` (digits a float never had cannot be recovered: the service
  sends amounts as JSON numbers, decoded by ``json.loads``). Out, see :func:`decimal_to_json`.
- ``Gender``: null or 0 is ``UNKNOWN``; a value that is not 0, 1, 2 or null becomes
  ``UNKNOWN`` and the raw wire value is kept in ``extra["gender"]`` (written back on
  unstructure), so nothing is lost and ``gender`` is always a ``Gender``.

A known field of the wrong shape (a timestamp that is not one, ``{}`` for ``gender``...) makes
the ``structure_*`` functions raise ``ValueError``; the resources layer reports it as a decode
error.
"""

from __future__ import annotations

import operator
import re
import sys
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Final, TypeVar, cast

import attrs
import cattrs
from cattrs.errors import ForbiddenExtraKeysError
from cattrs.fns import identity
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from .models import Customer, CustomerIdentity, CustomerStatistics, Gender, Identity

T = TypeVar("T")

UTC: Final = timezone.utc

# ---------------------------------------------------------------------------------------------
# Wire names
# ---------------------------------------------------------------------------------------------

#: Wire names that are not the plain camelCase of the attribute name (CONTRACT.md).
_IRREGULAR_WIRE_NAMES: Final[dict[type, dict[str, str]]] = {
    CustomerStatistics: {
        "order_amt": "orderAMT",
        "order_amta": "orderAMTA",
        "order_apct": "orderAPCT",
    },
    CustomerIdentity: {
        "type": "identityType",
        "value": "identityValue",
        "name": "identityName",
    },
}

_CAMEL_RE: Final = re.compile(r"_([a-z0-9])")


def _camel(name: str) -> str:
    """``nick_name`` -> ``nickName``."""
    return _CAMEL_RE.sub(lambda m: m.group(1).upper(), name)


def wire_names(cls: type) -> dict[str, str]:
    """Map each attribute of an attrs model (but ``extra``) to its wire name."""
    irregular = _IRREGULAR_WIRE_NAMES.get(cls, {})
    return {
        a.name: irregular.get(a.name, _camel(a.name))
        for a in attrs.fields(cls)
        if a.name != "extra"
    }


_CUSTOMER_WIRE: Final = wire_names(Customer)

#: Customer fields a client may write (CONTRACT.md "Customer model": the rest are read-only).
WRITABLE_CUSTOMER_FIELDS: Final[frozenset[str]] = frozenset(_CUSTOMER_WIRE) - {
    "id",
    "display_name",
    "last_updated",
    "date_created",
    "owner_id",
    "owner_name",
    "is_member",
}

# ---------------------------------------------------------------------------------------------
# Scalars, in
# ---------------------------------------------------------------------------------------------


def _to_str(v: Any) -> str | None:
    """A wire value for a ``str | None`` field (a number the service sends is kept as text)."""
    if v is None or v.__class__ is str:
        return v
    if isinstance(v, str | int | float | Decimal):
        return str(v)
    raise TypeError(f"expected a string, got {type(v).__name__}")


def _to_int(v: Any) -> int | None:
    """A wire value for an ``int | None`` field; accepts ``"123"`` (identity ``customerId``)."""
    if v is None or v.__class__ is int:
        return v
    if isinstance(v, bool):
        raise TypeError("expected an integer, got a bool")
    if isinstance(v, float | Decimal):
        if v != int(v):
            raise ValueError(f"expected an integer, got {v!r}")
        return int(v)
    if isinstance(v, int | str):
        return int(v)
    raise TypeError(f"expected an integer, got {type(v).__name__}")


_BOOL_STRINGS: Final = {"true": True, "false": False, "1": True, "0": False}


def _to_bool(v: Any) -> bool | None:
    """A wire value for a ``bool | None`` field; accepts 0/1 and ``"true"``/``"false"``."""
    if v is None or v.__class__ is bool:
        return v
    if v.__class__ is int and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.lower() in _BOOL_STRINGS:
        return _BOOL_STRINGS[v.lower()]
    raise ValueError(f"expected a boolean, got {v!r}")


def _to_decimal(v: Any) -> Decimal | None:
    """A wire number or string as a ``Decimal``; a float goes through its shortest ``repr``."""
    if v is None or v.__class__ is Decimal:
        return v
    if v.__class__ is float:
        # repr() is the shortest string that round-trips: 0.1 -> "0.1", not 0.1000000000000000055
        return Decimal(repr(v))
    if isinstance(v, bool) or not isinstance(v, int | str):
        raise TypeError(f"expected a number, got {type(v).__name__}")
    return Decimal(v)


def _to_dict(v: Any) -> dict[str, Any]:
    """A JSON object for a ``dict`` field (``attr``); null is an empty dict."""
    if v is None:
        return {}
    if isinstance(v, Mapping):
        return dict(v)
    raise TypeError(f"expected an object, got {type(v).__name__}")


_GENDERS: Final[dict[Any, Gender]] = {
    None: Gender.UNKNOWN,
    0: Gender.UNKNOWN,
    1: Gender.MALE,
    2: Gender.FEMALE,
    "0": Gender.UNKNOWN,
    "1": Gender.MALE,
    "2": Gender.FEMALE,
}


def _to_gender(v: Any) -> Gender | None:
    """The ``Gender`` of a wire value, or None when the value is no known gender."""
    if isinstance(v, bool | dict | list):
        return None
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return _GENDERS.get(v)


# Timestamps -------------------------------------------------------------------------------

_TS_RE: Final = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})(?:[T ](\d{2}):(\d{2})(?::(\d{2})(?:[.,](\d+))?)?)?"
    r"\s*(Z|z|[+-]\d{2}(?::?\d{2})?)?"
)


def _parse_timestamp_slow(s: str) -> datetime:
    """Parse what ``datetime.fromisoformat`` of this Python refuses (3.10: ``Z``, odd fractions)."""
    m = _TS_RE.fullmatch(s.strip())
    if m is None:
        raise ValueError(f"not a timestamp: {s!r}")
    year, month, day, hour, minute, second, frac, tz = m.groups()
    micro = int((frac or "0")[:6].ljust(6, "0"))
    tzinfo = UTC
    if tz and tz not in ("Z", "z"):
        digits = tz[1:].replace(":", "")
        offset = timedelta(hours=int(digits[:2]), minutes=int(digits[2:] or 0))
        tzinfo = timezone(-offset if tz[0] == "-" else offset)
    dt = datetime(
        int(year),
        int(month),
        int(day),
        int(hour or 0),
        int(minute or 0),
        int(second or 0),
        micro,
        tzinfo=tzinfo,
    )
    return dt if tzinfo is UTC else dt.astimezone(UTC)


_PY311: Final = sys.version_info >= (3, 11)
_fromisoformat: Final = datetime.fromisoformat


def parse_timestamp(s: str) -> datetime:
    """Parse a wire timestamp to an aware UTC ``datetime`` (no offset means UTC)."""
    if not _PY311 and s[-1:] in ("Z", "z"):
        s = s[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        return _parse_timestamp_slow(s)
    tz = dt.tzinfo
    if tz is UTC:
        return dt
    if tz is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def _to_utc(dt: datetime) -> datetime:
    """An aware UTC ``datetime`` from any ``datetime`` (naive is taken as UTC)."""
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _to_datetime(v: Any) -> datetime | None:
    """A wire timestamp (or null) as an aware UTC ``datetime`` (or None)."""
    if v is None:
        return None
    if type(v) is str:
        return parse_timestamp(v)
    if isinstance(v, datetime):
        return _to_utc(v)
    raise TypeError(f"expected a timestamp string, got {type(v).__name__}")


# ---------------------------------------------------------------------------------------------
# Scalars, out
# ---------------------------------------------------------------------------------------------


def format_timestamp(dt: datetime) -> str:
    """An aware (or naive, taken as UTC) ``datetime`` as the wire's ``2017-06-01T12:12:12Z``."""
    tz = dt.tzinfo
    if tz is UTC:
        return dt.isoformat()[:-6] + "Z"  # drop "+00:00"
    if tz is not None:
        dt = dt.astimezone(UTC).replace(tzinfo=None)
    return dt.isoformat() + "Z"


def decimal_to_json(d: Decimal) -> int | float | str:
    """A ``Decimal`` as a value ``json.dumps`` can write without losing digits.

    The service expects JSON numbers, and the stdlib ``json`` cannot write a ``Decimal``: an
    integral value becomes an ``int``, else a ``float`` when that float reads back as the same
    decimal (``Decimal(repr(float(d))) == d``), else (more digits than a float holds, NaN,
    infinities) the string ``str(d)``.
    """
    if not d.is_finite():
        return str(d)
    if d == d.to_integral_value():
        return int(d)
    f = float(d)
    if Decimal(repr(f)) == d:
        return f
    return str(d)


def _to_wire(v: Any) -> Any:
    """A user-given field value as JSON-ready data (datetime, Decimal, Gender converted)."""
    if v is None or v.__class__ in (str, int, bool, float):
        return v
    if isinstance(v, datetime):
        return format_timestamp(v)
    if isinstance(v, Decimal):
        return decimal_to_json(v)
    if isinstance(v, Gender):
        return int(v)
    if isinstance(v, Mapping):
        return {k: _to_wire(x) for k, x in v.items()}
    return v


# ---------------------------------------------------------------------------------------------
# The fast structure hook factory
# ---------------------------------------------------------------------------------------------

# Inline expressions per field type, on the local `{v}` holding the wire value: the common case
# (the exact JSON type, or null) costs no call; anything else goes to the lenient hook.
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

# Python >= 3.11: `fromisoformat` reads the contract's `...Z` form in C, and gives
# `timezone.utc` itself for it, so a row of well-formed timestamps parses without a Python call.
# A timestamp it refuses raises, and the row is read again with the lenient expressions.
_INLINE_FAST: Final[dict[Any, str]] = (
    {
        datetime | None: "None if {v} is None"
        " else d if (d := _fromiso({v})).tzinfo is _UTC else _to_utc(d)"
    }
    if _PY311
    else {}
)


def _structure_source(
    name: str,
    fields: list[attrs.Attribute[Any]],
    names: dict[str, str],
    local: list[str],
    ns: dict[str, Any],
    converter: cattrs.Converter,
    strict: bool,
    overrides: dict[Any, str],
) -> list[str]:
    """The source lines of one generated structure function (see _make_fast_structure_fn)."""
    lines = [
        f"def {name}(o, _=None):",
        "    try:",
        f"        ({', '.join(local)},) = _get_all(o)",
        "        complete = True",
        "    except KeyError:",
        "        g = o.get",
        *(f"        {v} = g({names[a.name]!r})" for v, a in zip(local, fields, strict=True)),
        "        complete = False",
        "    self = _new(_cls)",
    ]
    gender_field = None
    for i, (v, a) in enumerate(zip(local, fields, strict=True)):
        if a.type is Gender:
            gender_field = a.name
            lines += [
                f"    gender = _GENDERS.get({v}) if {v} is None or type({v}) is int"
                f" else _to_gender({v})",
                f"    self.{a.name} = _UNKNOWN if gender is None else gender",
            ]
            gender_local = v
            continue
        inline = overrides.get(a.type) or _INLINE.get(a.type)
        if inline is not None:
            expr = inline.replace("{v}", v)
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
    # All known keys present and no more keys than that: nothing unknown (the usual case).
    lines.append("    if (complete and len(o) == _N_KNOWN) or _KNOWN.issuperset(o):")
    lines.append("        extra = {}")
    lines.append("    else:")
    if strict:
        lines.append("        raise _ForbiddenExtraKeysError(None, _cls, set(o) - _KNOWN)")
    else:
        lines.append("        extra = {k: o[k] for k in o if k not in _KNOWN}")
    if gender_field:
        lines.append("    if gender is None:")
        if strict:
            lines.append(f"        raise ValueError('unknown gender: ' + repr({gender_local}))")
        else:
            # An unmappable gender keeps its raw value, so nothing the service sent is lost.
            lines.append(f"        extra['gender'] = {gender_local}")
    lines.append("    self.extra = extra")
    lines.append("    return self")
    return lines


def _make_fast_structure_fn(
    cls: type[Any], converter: cattrs.Converter, strict: bool
) -> Callable[[Mapping[str, Any], Any], Any]:
    """Generate the structure hook of an attrs model that has an ``extra`` dict field.

    The generated function reads every wire key at once with an ``itemgetter`` (a row with all
    the fields, the usual case) or one by one with ``dict.get`` (a ``select=`` or sparse row:
    missing and null give the default), converts each inline, sets the slots of
    ``object.__new__(cls)``, and collects keys it does not know into ``extra`` (or, when
    ``strict``, raises ``ForbiddenExtraKeysError``). It never calls ``__init__``, so the model
    must have no validators, converters or ``__attrs_post_init__`` (checked here).
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
        "_cls": cls,
        "_new": object.__new__,
        "_KNOWN": known,
        "_N_KNOWN": len(known),
        "_get_all": operator.itemgetter(*(names[a.name] for a in fields)),
        "_ForbiddenExtraKeysError": ForbiddenExtraKeysError,
        "_to_str": _to_str,
        "_to_int": _to_int,
        "_to_bool": _to_bool,
        "_to_decimal": _to_decimal,
        "_Decimal": Decimal,
        "_repr": repr,
        "_to_dict": _to_dict,
        "_to_datetime": _to_datetime,
        "_to_utc": _to_utc,
        "_fromiso": _fromisoformat,
        "_UTC": UTC,
        "_to_gender": _to_gender,
        "_GENDERS": _GENDERS,
        "_UNKNOWN": Gender.UNKNOWN,
    }
    local = [f"v{i}" for i in range(len(fields))]
    lenient = _structure_source("lenient", fields, names, local, ns, converter, strict, {})
    if _INLINE_FAST:
        fast = _structure_source("fast", fields, names, local, ns, converter, strict, _INLINE_FAST)
        # Anything the fast expressions refuse is read again by the lenient ones.
        lines = [
            *lenient,
            "def structure(o, _=None):",
            "    try:",
            *(f"    {line}" for line in fast[1:]),
            "    except (ValueError, TypeError):",
            "        return lenient(o)",
        ]
    else:
        lines = [line.replace("def lenient(", "def structure(", 1) for line in lenient]
    source = "\n".join(lines) + "\n"
    filename = f"<dmhub_async structure {cls.__name__}{' strict' if strict else ''}>"
    exec(compile(source, filename, "exec"), ns)
    fn = ns["structure"]
    fn.__doc__ = f"Structure a wire {cls.__name__} (generated by _make_fast_structure_fn)."
    return cast("Callable[[Mapping[str, Any], Any], Any]", fn)


# ---------------------------------------------------------------------------------------------
# The converter
# ---------------------------------------------------------------------------------------------

_FAST_MODELS: Final = (Customer, CustomerStatistics)


def _wire_overrides(cls: type) -> dict[str, Any]:
    """cattrs ``override(rename=...)`` for each field of ``cls``; ``extra`` omitted."""
    overrides: dict[str, Any] = {a: override(rename=w) for a, w in wire_names(cls).items()}
    if "extra" in attrs.fields_dict(cls):
        overrides["extra"] = override(omit=True)
    return overrides


def make_converter(strict: bool = False) -> cattrs.Converter:
    """Build the wire converter; ``strict`` rejects unknown keys (for tests), else they are kept."""
    conv = cattrs.Converter(detailed_validation=False)

    # Structure: lenient scalar hooks (cattrs hooks take the value and the type).
    conv.register_structure_hook(str | None, lambda v, _: _to_str(v))
    conv.register_structure_hook(int | None, lambda v, _: _to_int(v))
    conv.register_structure_hook(int, lambda v, _: _to_int(v))
    conv.register_structure_hook(bool | None, lambda v, _: _to_bool(v))
    conv.register_structure_hook(datetime | None, lambda v, _: _to_datetime(v))
    conv.register_structure_hook(datetime, lambda v, _: _to_datetime(v))
    conv.register_structure_hook(Decimal | None, lambda v, _: _to_decimal(v))
    conv.register_structure_hook(Decimal, lambda v, _: _to_decimal(v))
    conv.register_structure_hook(int | str | None, lambda v, _: v)
    conv.register_structure_hook_func(lambda t: t == dict[str, Any], lambda v, _: _to_dict(v))

    # Unstructure: the wire's forms.
    conv.register_unstructure_hook(datetime, format_timestamp)
    conv.register_unstructure_hook(
        datetime | None, lambda v: None if v is None else format_timestamp(v)
    )
    conv.register_unstructure_hook(Decimal, decimal_to_json)
    conv.register_unstructure_hook(
        Decimal | None, lambda v: None if v is None else decimal_to_json(v)
    )
    conv.register_unstructure_hook(Gender, int)
    # cattrs inlines its own `identity`: no call per plain field.
    for tp in (str | None, int | None, bool | None, int | str | None):
        conv.register_unstructure_hook(tp, identity)
    conv.register_unstructure_hook_func(lambda t: t == dict[str, Any], _to_wire)

    # Models with `extra`: the generated fast hook in, cattrs's generated hook plus `extra` out.
    for cls in _FAST_MODELS:
        conv.register_structure_hook(cls, _make_fast_structure_fn(cls, conv, strict))
        conv.register_unstructure_hook(cls, _make_unstructure_with_extra(cls, conv))

    # Identity bindings: cattrs's generated hooks with the renames.
    conv.register_structure_hook(
        CustomerIdentity,
        make_dict_structure_fn(
            CustomerIdentity,
            conv,
            _cattrs_forbid_extra_keys=strict,
            **_wire_overrides(CustomerIdentity),
        ),
    )
    conv.register_unstructure_hook(
        CustomerIdentity,
        make_dict_unstructure_fn(CustomerIdentity, conv, **_wire_overrides(CustomerIdentity)),
    )
    return conv


def _make_unstructure_with_extra(
    cls: type[T], conv: cattrs.Converter
) -> Callable[[T], dict[str, Any]]:
    """cattrs's renaming unstructure hook, then ``extra`` merged back under its wire names."""
    base = make_dict_unstructure_fn(cls, conv, **_wire_overrides(cls))

    def unstructure(obj: T) -> dict[str, Any]:
        data = base(obj)
        extra = obj.extra  # type: ignore[attr-defined]
        if extra:
            data.update(extra)
        return data

    return unstructure


_converter: Final = make_converter()
# The hooks, fetched once: calling them directly skips the converter's per-call dispatch.
_structure_customer_hook: Final[Callable[[Any, Any], Customer]] = _converter.get_structure_hook(
    Customer
)
_structure_statistics_hook: Final[Callable[[Any, Any], CustomerStatistics]] = (
    _converter.get_structure_hook(CustomerStatistics)
)
_structure_identity_hook: Final[Callable[[Any, Any], CustomerIdentity]] = (
    _converter.get_structure_hook(CustomerIdentity)
)
_unstructure_customer_hook: Final[Callable[[Customer], dict[str, Any]]] = (
    _converter.get_unstructure_hook(Customer)
)

# What a known field of the wrong shape raises inside the hooks (AttributeError: a row that is
# not an object).
_SHAPE_ERRORS: Final = (TypeError, ValueError, ArithmeticError, AttributeError, KeyError)


def _shape_error(cls: type, err: Exception) -> ValueError:
    """The ``ValueError`` a malformed row raises."""
    return ValueError(f"cannot read a {cls.__name__} from the response: {err}")


# ---------------------------------------------------------------------------------------------
# What the resources layer calls
# ---------------------------------------------------------------------------------------------


def structure_customer(data: Mapping[str, Any]) -> Customer:
    """A wire customer object as a ``Customer``; raises ValueError when it is malformed."""
    try:
        return _structure_customer_hook(data, Customer)
    except _SHAPE_ERRORS as err:
        raise _shape_error(Customer, err) from err


def structure_customers(rows: list[Any]) -> list[Customer]:
    """The ``rows`` of a customer page as ``Customer``s; raises ValueError when malformed."""
    hook = _structure_customer_hook
    try:
        return [hook(row, Customer) for row in rows]
    except _SHAPE_ERRORS as err:
        raise _shape_error(Customer, err) from err


def structure_identity(data: Mapping[str, Any]) -> CustomerIdentity:
    """A wire identity binding (``customerId`` a string or a number) as a ``CustomerIdentity``."""
    try:
        return _structure_identity_hook(data, CustomerIdentity)
    except _SHAPE_ERRORS as err:
        raise _shape_error(CustomerIdentity, err) from err


def structure_identities(rows: list[Any]) -> list[CustomerIdentity]:
    """A JSON array of identity bindings as ``CustomerIdentity``s."""
    hook = _structure_identity_hook
    try:
        return [hook(row, CustomerIdentity) for row in rows]
    except _SHAPE_ERRORS as err:
        raise _shape_error(CustomerIdentity, err) from err


def structure_statistics(data: Mapping[str, Any]) -> CustomerStatistics:
    """One ``items`` entry of the statistics answer as ``CustomerStatistics``."""
    try:
        return _structure_statistics_hook(data, CustomerStatistics)
    except _SHAPE_ERRORS as err:
        raise _shape_error(CustomerStatistics, err) from err


def structure_statistics_list(rows: list[Any]) -> list[CustomerStatistics]:
    """The ``items`` of the statistics answer as ``CustomerStatistics``."""
    hook = _structure_statistics_hook
    try:
        return [hook(row, CustomerStatistics) for row in rows]
    except _SHAPE_ERRORS as err:
        raise _shape_error(CustomerStatistics, err) from err


def unstructure_customer(customer: Customer) -> dict[str, Any]:
    """A ``Customer`` as JSON-ready wire data: every field, camelCase, ``extra`` merged back."""
    return _unstructure_customer_hook(customer)


def customer_fields_to_wire(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Snake_case customer keyword fields as a camelCase wire body; None (clear) is kept.

    Values are made JSON-ready: ``datetime`` to ``...Z``, ``Decimal`` per
    :func:`decimal_to_json`, ``Gender`` to its int; ``attr`` passes through as an object. Names
    are not validated here (the resources layer refuses unknown keywords).
    """
    wire = _CUSTOMER_WIRE
    return {wire.get(k) or _camel(k): _to_wire(v) for k, v in fields.items()}


def identity_to_wire(identity: Identity) -> dict[str, Any]:
    """An ``Identity`` as the wire's ``identityType``/``identityValue``(/``identityName``)."""
    data: dict[str, Any] = {"identityType": identity.type, "identityValue": identity.value}
    if identity.name is not None:
        data["identityName"] = identity.name
    return data
