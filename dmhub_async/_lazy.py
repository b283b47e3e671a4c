"""Package namespaces that import a name's module on its first use (PEP 562).

``import dmhub_async`` is what the pytest plugin costs every test run of a project that has
the SDK installed: about 0.25 s of aiohttp and the SDK when the package imported everything
up front. Now the names come in as they are used, and a type checker still sees them all (each
package imports them under ``TYPE_CHECKING``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

__all__ = ["lazy_namespace"]


def lazy_namespace(
    package: str, homes: Mapping[str, str], names: Sequence[str], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """A package's ``__getattr__`` and ``__dir__``: ``homes`` maps each name to its module
    (relative to ``package``); any other name is looked for as a submodule
    (``dmhub_async.models``), as the imports up front made them attributes."""

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            if name.startswith("__"):
                raise AttributeError(f"module {package!r} has no attribute {name!r}")
            try:
                return importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as err:
                if err.name != f"{package}.{name}":
                    raise  # the module is there and lacks one of its own imports
                raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(home, package), name)
        namespace[name] = value  # found by the module's dict from now on, without this call
        return value

    def __dir__() -> list[str]:
        return sorted({*namespace, *names})

    return __getattr__, __dir__
