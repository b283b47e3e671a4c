"""Run the property tests at random, many examples each: what CI's derandomized runs cannot find.

Not collected as tests. Load it as a plugin, with the number of examples in ``SOAK_N``::

    PYTHONPATH=tests SOAK_N=2000 python -m pytest -p soak_plugin -p no:cacheprovider \\
        tests/test_fuzz_public.py tests/reliability/test_rel_bad_input.py

Every ``@given`` test then draws ``SOAK_N`` examples at random (no database, no deadline, no
health checks), its own ``@settings`` included. What it finds becomes an ``@example`` in the
test (STYLE: property tests run derandomized in CI). The issue-15 ninth round found the
defects of its CHANGELOG entries this way (docs/reliability.md). A run of 5,000 examples may
pass the suite's per-test timeout: ``-o timeout=0`` lifts it.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings


def pytest_collection_modifyitems(items: list[Any]) -> None:
    n = int(os.environ.get("SOAK_N", "1000"))
    soak = {
        "max_examples": n,
        "derandomize": False,
        "database": None,
        "deadline": None,
        "suppress_health_check": list(HealthCheck),
    }
    settings.register_profile("soak", **soak)
    settings.load_profile("soak")
    for item in items:
        test = getattr(getattr(item, "obj", None), "__func__", getattr(item, "obj", None))
        own = getattr(test, "_hypothesis_internal_use_settings", None)  # the test's @settings
        if own is not None:
            test._hypothesis_internal_use_settings = settings(own, **soak)  # type: ignore[union-attr]
