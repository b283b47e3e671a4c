"""The attrs models: defaults, identity semantics, the writable-field TypedDict."""

from __future__ import annotations

import copy
import pickle

import attrs
import pytest

import dmhub_async.models as models
from dmhub_async._converter import WRITABLE_CUSTOMER_FIELDS
from dmhub_async.models import (
    Customer,
    CustomerFields,
    CustomerIdentity,
    Gender,
    Identity,
    Page,
)


def test_models_all_is_sorted_and_complete() -> None:
    exported = {n for n in dir(models) if not n.startswith("_") and n[0].isupper()}
    assert models.__all__ == sorted(models.__all__)
    assert set(models.__all__) == exported


def test_gender_values() -> None:
    assert [int(g) for g in Gender] == [0, 1, 2]
    assert Gender(1) is Gender.MALE
    assert Gender(2) is Gender.FEMALE


def test_customer_defaults() -> None:
    c = Customer()
    assert c.gender is Gender.UNKNOWN
    assert c.attr == {}
    assert c.extra == {}
    others = {a.name for a in attrs.fields(Customer)} - {"gender", "attr", "extra"}
    assert all(getattr(c, name) is None for name in others)
    # Factories, not one shared dict.
    assert Customer().attr is not c.attr
    assert Customer().extra is not c.extra


def test_customer_is_slotted_and_keyword_only() -> None:
    c = Customer(name="小D")
    with pytest.raises(AttributeError):
        c.nonexistent = 1  # type: ignore[attr-defined]
    with pytest.raises(TypeError):
        Customer(1)  # type: ignore[misc]


def test_identity_equality_and_hash_ignore_name() -> None:
    a = Identity("wechat", "o1")
    b = Identity("wechat", "o1", name="昵称")
    assert a == b
    assert hash(a) == hash(b)
    assert {a: 7}[b] == 7
    assert Identity("wechat", "o1") != Identity("wechat", "o2")
    assert Identity("wechat", "o1") != Identity("email", "o1")
    assert len({a, b, Identity("email", "o1")}) == 2


def test_identity_survives_pickle_copy_and_evolve_as_a_key() -> None:
    # A user keeps lookup_many's result, or sends identities to another process: the copies
    # compare, hash and find their entries as the originals do (the name left out of both).
    a = Identity("wechat", "o1", name="昵称")
    results = {a: 7, Identity("mobile", "13900000000"): None}
    for copied in (
        pickle.loads(pickle.dumps(a)),
        copy.copy(a),
        copy.deepcopy(a),
        attrs.evolve(a, name="另一个"),
    ):
        assert copied == a
        assert hash(copied) == hash(a) == hash(Identity("wechat", "o1"))
        assert results[copied] == 7
    assert pickle.loads(pickle.dumps(results)) == results
    assert attrs.evolve(a, value="o2") != a
    assert hash(attrs.evolve(a, value="o2")) == hash(Identity("wechat", "o2"))


def test_identity_is_frozen() -> None:
    ident = Identity("wechat", "o1")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        ident.value = "o2"  # type: ignore[misc]


def test_customer_identity_gives_its_identity() -> None:
    binding = CustomerIdentity(customer_id=123456, type="wechat", value="o1", name="小羊苏西")
    assert binding.identity == Identity("wechat", "o1")
    assert binding.identity.name == "小羊苏西"
    assert hash(binding) == hash(CustomerIdentity(123456, "wechat", "o1", "小羊苏西"))


def test_page_is_generic_and_frozen() -> None:
    page: Page[int] = Page(items=[1, 2], number=1, has_next=True)
    assert page.total_records is None
    assert page.total_pages is None
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        page.number = 2  # type: ignore[misc]


def test_customer_fields_keys_are_the_writable_fields() -> None:
    keys = CustomerFields.__required_keys__ | CustomerFields.__optional_keys__
    assert keys == WRITABLE_CUSTOMER_FIELDS
    assert not CustomerFields.__required_keys__


def test_writable_fields_exclude_read_only_ones() -> None:
    read_only = {
        "id",
        "display_name",
        "last_updated",
        "date_created",
        "owner_id",
        "owner_name",
        "is_member",
        "extra",
    }
    every = {a.name for a in attrs.fields(Customer)}
    assert every - read_only == WRITABLE_CUSTOMER_FIELDS
