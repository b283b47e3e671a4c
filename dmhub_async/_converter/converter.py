"""The wire converter: one ``cattrs.Converter``, its scalar hooks and its hook factories.

One converter per process (never cattrs's global one), built by :func:`make_converter`. Scalar
hooks come from :mod:`.scalars`; hook factories give every attrs class its camelCase wire
names (:mod:`.names`), in and out, and the models with an ``extra`` dict the generated hook of
:mod:`.codegen`. The ``CustomerFields`` keyword arguments of a write are written by the same
converter, so a request body takes the one path to the wire.

Lenient (the module's converter): unknown response fields land in ``extra`` under their wire
names, nulls and missing keys give the field's default. Strict (``make_converter(strict=True)``,
the test suite's): cattrs's own ``forbid_extra_keys`` setting; an unknown key raises
``cattrs.errors.ForbiddenExtraKeysError``, a value a field cannot hold (an unknown gender)
``ValueError``, so drift between the models and the service shows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

import attrs
import cattrs
from cattrs.errors import ForbiddenExtraKeysError
from cattrs.fns import identity
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override
from cattrs.gen.typeddicts import make_dict_unstructure_fn as make_typeddict_unstructure_fn

from ..models import Customer, CustomerFields, Gender
from . import scalars
from .codegen import has_extra, make_fast_structure_fn
from .names import renames, wire_names

#: The lenient reading of each scalar type a model field has.
_SCALARS_IN: dict[Any, Callable[[Any], Any]] = {
    str | None: scalars.to_str,
    int | None: scalars.to_int,
    int: scalars.required(scalars.to_int),
    str: scalars.required(scalars.to_str),
    bool | None: scalars.to_bool,
    datetime | None: scalars.to_datetime,
    datetime: scalars.required(scalars.to_datetime),
    Decimal | None: scalars.to_decimal,
    Decimal: scalars.required(scalars.to_decimal),
    int | str | None: identity,
}


def make_converter(strict: bool = False) -> cattrs.Converter:
    """Build the wire converter; ``strict`` rejects unknown keys (for tests), else they are kept."""
    conv = cattrs.Converter(detailed_validation=False, forbid_extra_keys=strict)

    # Scalars in (cattrs hooks take the value and the type).
    for tp, read in _SCALARS_IN.items():
        conv.register_structure_hook(tp, _ignoring_type(read))
    conv.register_structure_hook_func(
        lambda t: t == dict[str, Any], lambda v, _: scalars.to_dict(v)
    )

    # Scalars out: the wire's forms; anything else by its runtime class (unions, `attr` values).
    conv.register_unstructure_hook(datetime, scalars.format_timestamp)
    conv.register_unstructure_hook(Decimal, scalars.decimal_to_json)
    conv.register_unstructure_hook(Gender, int)

    # attrs classes: camelCase wire names, in and out. Later factories take precedence, so the
    # models with `extra` get theirs.
    conv.register_structure_hook_factory(attrs.has, _structure_renamed)
    conv.register_unstructure_hook_factory(attrs.has, _unstructure_renamed)
    conv.register_structure_hook_factory(has_extra, _structure_with_extra)
    conv.register_unstructure_hook_factory(has_extra, _unstructure_with_extra)

    # The keyword arguments of a customer write: snake_case in, camelCase wire body out.
    customer_wire = wire_names(Customer)
    field_names: dict[str, Any] = {
        k: override(rename=customer_wire[k]) for k in CustomerFields.__annotations__
    }
    # A date_join given as text goes out in the wire's form too: `+08:00` read and sent in UTC.
    field_names["date_join"] = override(
        rename=customer_wire["date_join"], unstruct_hook=scalars.timestamp_to_wire
    )
    # And an amount as text as the number it is: "1000.50" went out as a JSON string.
    field_names["annual_revenue"] = override(
        rename=customer_wire["annual_revenue"], unstruct_hook=scalars.number_to_wire
    )
    # attr as JSON data: a model or an Enum in it is left for the body's check to refuse.
    field_names["attr"] = override(rename=customer_wire["attr"], unstruct_hook=scalars.json_to_wire)
    conv.register_unstructure_hook(
        CustomerFields, make_typeddict_unstructure_fn(CustomerFields, conv, **field_names)
    )
    return conv


def _ignoring_type(read: Callable[[Any], Any]) -> Callable[[Any, Any], Any]:
    """A one-argument scalar reader as a cattrs structure hook (value, type)."""
    return lambda value, _: read(value)


def _structure_renamed(cls: Any, conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
    """cattrs's generated hook with the wire names (``forbid_extra_keys`` from the converter)."""
    return make_dict_structure_fn(cls, conv, **renames(wire_names(cls)))


def _unstructure_renamed(cls: Any, conv: cattrs.Converter) -> Callable[[Any], dict[str, Any]]:
    """cattrs's generated hook with the wire names; an optional field left at None is not sent."""
    names = wire_names(cls)
    overrides: dict[str, Any] = {
        a.name: override(rename=names[a.name], omit_if_default=a.default is None)
        for a in attrs.fields(cls)
    }
    return make_dict_unstructure_fn(cls, conv, **overrides)


def _structure_with_extra(cls: Any, conv: cattrs.Converter) -> Callable[[Any, Any], Any]:
    """The generated fast hook; on a strict converter, anything left in ``extra`` raises."""
    structure = make_fast_structure_fn(cls, conv)
    if not conv.forbid_extra_keys:
        return structure
    known = frozenset(wire_names(cls).values())

    def structure_strict(data: Mapping[str, Any], _: Any = None) -> Any:
        obj = structure(data, _)
        extra: dict[str, Any] = obj.extra
        if extra:
            unknown = extra.keys() - known
            if unknown:
                raise ForbiddenExtraKeysError(None, cls, set(unknown))
            # A known key kept in `extra`: a value its field cannot hold (an unknown gender).
            name, value = next(iter(extra.items()))
            raise ValueError(f"unknown {name}: {value!r}")
        return obj

    return structure_strict


def _unstructure_with_extra(cls: Any, conv: cattrs.Converter) -> Callable[[Any], dict[str, Any]]:
    """Every field under its wire name, then ``extra`` merged back: what the service sent."""
    base = make_dict_unstructure_fn(cls, conv, **renames(wire_names(cls), omit=("extra",)))

    def unstructure(obj: Any) -> dict[str, Any]:
        data = base(obj)
        extra = obj.extra
        if extra:
            data.update(extra)
        return data

    return unstructure
