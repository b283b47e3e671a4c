"""``dmhub_async.__all__``: sorted (by ``sorted()``), complete, and every name documented."""

from __future__ import annotations

import inspect
import subprocess
from collections.abc import Callable
from pathlib import Path

import dmhub_async
import dmhub_async._auth
import dmhub_async._exceptions
import dmhub_async.models

#: The public names users import from ``dmhub_async``: each one must keep working.
DESIGNED = {
    "DMHubClient",
    "MemoryTokenStore",
    "FileTokenStore",
    "RedisTokenStore",
    "TokenStore",
    "Customer",
    "Identity",
    "CustomerIdentity",
    "CustomerStatistics",
    "Page",
    "Gender",
    "AsyncPaginator",
    "EMPTY_STAGE",
    "RetryPolicy",
}


def public_objects() -> dict[str, object]:
    return {name: getattr(dmhub_async, name) for name in dmhub_async.__all__}


def test_all_is_sorted():
    assert dmhub_async.__all__ == sorted(dmhub_async.__all__)


def test_all_names_exist_once():
    assert len(set(dmhub_async.__all__)) == len(dmhub_async.__all__)
    missing = [name for name in dmhub_async.__all__ if not hasattr(dmhub_async, name)]
    assert missing == []


def test_designed_names_are_exported():
    assert DESIGNED - set(dmhub_async.__all__) == set()


def test_every_error_class_is_exported():
    errors = {
        name
        for name, obj in vars(dmhub_async._exceptions).items()
        if inspect.isclass(obj) and issubclass(obj, dmhub_async.DMHubError)
    }
    # The ten of the error tree in docs/architecture.md, and the ones added since.
    assert errors == {
        "APIConnectionError",
        "APIError",
        "APITimeoutError",
        "AuthenticationError",
        "DMHubError",
        "InvalidRequestError",
        "NotFoundError",
        "RateLimitError",
        "ResponseDecodeError",
        "ServerError",
        "ResponseTooLargeError",  # issue 12: an answer over the client's size cap
        "TokenStoreError",  # issue 13: a token store that fails or is unsafe
    }
    assert errors - set(dmhub_async.__all__) == set()


def test_every_model_and_token_store_is_exported():
    stores = {
        name
        for name, obj in vars(dmhub_async._auth).items()
        if inspect.isclass(obj) and name.endswith("TokenStore")
    }
    wanted = set(dmhub_async.models.__all__) | stores
    assert wanted - set(dmhub_async.__all__) == set()


def test_every_public_class_or_function_in_the_package_namespace_is_in_all():
    stray = [
        name
        for name, obj in vars(dmhub_async).items()
        if not name.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and name not in dmhub_async.__all__
    ]
    assert stray == []


def test_every_exported_class_and_function_has_a_docstring():
    undocumented = [
        name
        for name, obj in public_objects().items()
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and not (obj.__doc__ or "").strip()
    ]
    assert undocumented == []


def test_exported_names_are_the_implementations():
    # Users import from dmhub_async only; the objects are the ones the package raises and uses.
    from dmhub_async._client import DMHubClient
    from dmhub_async._exceptions import APIError

    assert dmhub_async.DMHubClient is DMHubClient
    assert dmhub_async.APIError is APIError
    assert isinstance(dmhub_async.__version__, str)


def test_importing_the_package_or_its_pytest_plugin_loads_no_http_stack() -> None:
    # The pytest plugin runs in every test run of a project that has the SDK installed: it
    # imported the whole SDK and aiohttp (about 0.25 s a run) through the package's imports.
    import subprocess
    import sys

    heavy = ["aiohttp", "dmhub_async._client", "dmhub_async.testing._simulator", "attrs"]
    probe = (
        "import sys, dmhub_async, dmhub_async.testing.pytest_plugin\n"
        f"print([m for m in {heavy!r} if m in sys.modules])\n"
        "from dmhub_async import DMHubClient\n"  # a name brings its module when first used
        "print('dmhub_async._client' in sys.modules, DMHubClient.__module__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.splitlines() == ["[]", "True dmhub_async._client"]


def test_every_name_and_subpackage_comes_on_first_use() -> None:
    import subprocess
    import sys

    probe = (
        "import dmhub_async, dmhub_async.testing as t\n"
        "ns = {}\n"
        "exec('from dmhub_async import *', ns)\n"
        "print(sorted(n for n in ns if not n.startswith('__')) == sorted(\n"
        "    n for n in dmhub_async.__all__ if not n.startswith('__')))\n"
        "print(dmhub_async.models.Customer is dmhub_async.Customer, t.FakeClock.__name__)\n"
        "print(set(dmhub_async.__all__) <= set(dir(dmhub_async)))\n"
        "try:\n    dmhub_async.Nope\nexcept AttributeError as err:\n    print(err)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.splitlines() == [
        "True",
        "True FakeClock",
        "True",
        "module 'dmhub_async' has no attribute 'Nope'",
    ]


def test_0_1s_statistics_resource_name_warns_and_is_the_resource_where_0_1_defined_it() -> None:
    """0.1's resource behind ``dm.customer_statistics`` was ``CustomerStatistics``, defined in
    ``dmhub_async.resources.customer_statistics``; it is ``CustomerStatisticsResource`` now.
    ``dmhub_async.resources.CustomerStatistics`` warned and gave the resource, but the module
    0.1 defined it in gave the model under that name, silently: a 0.1 import from there got
    another class (``isinstance(dm.customer_statistics, CustomerStatistics)`` turned false)."""
    import warnings

    import dmhub_async.resources
    import dmhub_async.resources.customer_statistics as module
    from dmhub_async.resources import CustomerStatisticsResource

    for where in (dmhub_async.resources, module):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            resource = where.CustomerStatistics
        assert resource is CustomerStatisticsResource, where
        assert [w.category for w in caught] == [DeprecationWarning], where
        assert "CustomerStatisticsResource" in str(caught[0].message)


def test_0_1s_positional_fields_of_every_exported_class_keep_their_places() -> None:
    """A class of 0.1 made with its fields by position (``ClientStats(5, 1, 2)``: 5 requests,
    1 retry, 2 token fetches) means what it meant: a new field goes after them. ``responses``
    was put second, and 0.1's ``ClientStats(5, 1, 2)`` read as 1 response, 2 retries and no
    token fetch, silently (a test comparing ``dm.stats`` with it failed naming other counts)."""
    import attrs

    at_0_1 = {  # each attrs class 0.1 exported, its fields by position as 0.1 took them
        "ClientStats": ["requests", "retries", "token_fetches"],
        "Token": ["value", "expires_at"],
        "RetryPolicy": [
            "max_retries", "initial_delay", "max_delay", "retry_after_cap", "budget", "jitter"
        ],
    }  # fmt: skip
    for name, fields in at_0_1.items():
        now = [f.name for f in attrs.fields(getattr(dmhub_async, name)) if f.init and not f.kw_only]
        assert now[: len(fields)] == fields, name
    stats = dmhub_async.ClientStats(5, 1, 2)
    assert (stats.requests, stats.retries, stats.token_fetches) == (5, 1, 2)


def test_the_version_is_one_and_past_the_last_release_while_changes_are_unreleased() -> None:
    # Both 0.1.0 and the code after it said "0.1.0" (--version, the User-Agent): a bug report
    # could not tell them apart. The package's version, the installed distribution's and the
    # CHANGELOG agree: past the last release heading while [Unreleased] lists changes.
    import importlib.metadata
    import re
    from pathlib import Path

    from packaging.version import Version

    changelog = (Path(__file__).parents[1] / "CHANGELOG.md").read_text(encoding="utf-8")
    unreleased = changelog.split("## [Unreleased]", 1)[1].split("\n## [", 1)[0]
    released = [Version(v) for v in re.findall(r"^## \[(\d[^\]]*)\]", changelog, re.M)]
    version = Version(dmhub_async.__version__)
    assert importlib.metadata.version("dmhub-async") == dmhub_async.__version__
    if "\n- " in unreleased:
        assert version > max(released)
        assert version.is_devrelease  # not a release until its heading is written
    else:
        assert version == max(released)


def test_every_public_callable_has_type_hints_that_resolve_at_run_time() -> None:
    """``typing.get_type_hints`` (what pydantic's ``validate_call``, typer, Prefect or a task
    queue's signature check call) on every public function, class and method: the names only
    a type checker imported (``DMHubClient`` in ``export_customers``, ``plan_shards``,
    ``export_shard``... and ``Awaitable`` in the simulator's request hooks) raised NameError."""
    import typing
    import warnings

    import dmhub_async.export
    import dmhub_async.shards
    import dmhub_async.testing
    from dmhub_async.resources.customer_statistics import CustomerStatisticsResource
    from dmhub_async.resources.customers import Customers
    from dmhub_async.resources.identities import Identities

    found: dict[str, object] = {}
    for module in (dmhub_async, dmhub_async.export, dmhub_async.shards, dmhub_async.testing):
        for name in module.__all__:
            found[f"{module.__name__}.{name}"] = getattr(module, name)
    for cls in (Customers, Identities, CustomerStatisticsResource):  # dm.customers, ...
        found[f"resources.{cls.__name__}"] = cls
    failed = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        for where, obj in list(found.items()):
            if not inspect.isclass(obj):
                continue
            for attr, member in vars(obj).items():
                if attr.startswith("_") and attr != "__init__":
                    continue
                member = member.fget if isinstance(member, property) else member
                member = getattr(member, "__func__", member)  # a classmethod's, a staticmethod's
                if inspect.isfunction(member):
                    found[f"{where}.{attr}"] = member
    # Its `client=` is a redis.asyncio.Redis: the redis extra's, not imported without it.
    del found["dmhub_async.RedisTokenStore.__init__"]
    for where, obj in found.items():
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        try:
            typing.get_type_hints(obj)
        except Exception as err:  # each one named below
            failed.append(f"{where}: {type(err).__name__}: {err}")
    assert failed == []
    assert len(found) > 150  # the methods were found too


_SUBCLASSES = """\
from dmhub_async import DMHubClient, RedisTokenStore
from dmhub_async.testing import DMHubSimulator


class MyClient(DMHubClient):
    async def leads(self) -> int:
        return await self.customers.count(stage="lead")


class MySim(DMHubSimulator):
    def first(self) -> int:
        return self.customer_ids()[0]


class MyStore(RedisTokenStore):
    def where(self) -> str:
        return "here"


async def main() -> int:
    async with MySim(customers=20) as sim, MyStore("redis://127.0.0.1:6379/0") as store:
        async with MyClient(sim.app_id, sim.secret, base_url=sim.url, token_store=store) as dm:
            faster = dm.with_options(timeout=5)
            return sim.first() + await dm.leads() + await faster.leads() + len(store.where())
"""


def test_a_subclass_is_itself_in_async_with_and_with_options_under_mypy_strict(
    tmp_path: Path, mypy_strict: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    # `async with MyClient(...) as dm` (a client of the user's with helpers of its own) ran,
    # and failed mypy --strict: '"DMHubClient" has no attribute "leads"'; the same for
    # with_options(), a DMHubSimulator's and a RedisTokenStore's subclass.
    program = tmp_path / "subclasses.py"
    program.write_text(_SUBCLASSES, encoding="utf-8")
    result = mypy_strict(program, cwd=tmp_path, mypy_path=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stdout + result.stderr


_RESOURCE_IMPORTS = """\
from dmhub_async.resources import CustomerStatistics, Custmers
from dmhub_async.resources.customer_statistics import CustomerStatisticsResource, Nope

resource: type[CustomerStatisticsResource] = CustomerStatistics  # 0.1's name: the resource
count: int = Custmers.count() + Nope
"""


def test_a_misspelt_import_from_the_resources_fails_a_users_mypy_strict(
    tmp_path: Path, mypy_strict: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    # Their module __getattr__ (for 0.1's CustomerStatistics) made every name "exist" to a
    # type checker, as Any: `from dmhub_async.resources import Custmers` and the code using
    # it passed mypy --strict, then raised ImportError. 0.1's name is typed as what it gives.
    program = tmp_path / "imports.py"
    program.write_text(_RESOURCE_IMPORTS, encoding="utf-8")
    result = mypy_strict(program, cwd=tmp_path, mypy_path=Path(__file__).resolve().parents[1])
    errors = [line for line in result.stdout.splitlines() if ": error: " in line]
    assert len(errors) == 2, result.stdout  # the resource under 0.1's name is typed
    assert 'dmhub_async.resources" has no attribute "Custmers"' in errors[0]
    assert 'customer_statistics" has no attribute "Nope"' in errors[1]
