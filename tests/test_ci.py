"""What CI runs: the derandomized property tests, and the README's test command."""

from __future__ import annotations

import os

from _helpers import hypothesis_profile
from hypothesis import settings


def test_ci_draws_the_same_examples_every_run() -> None:
    assert hypothesis_profile({"CI": "true"}) == "ci"
    assert hypothesis_profile({"CI": "1"}) == "ci"
    ci = settings.get_profile("ci")
    assert ci.derandomize
    assert ci.database is None


def test_a_local_run_explores() -> None:
    assert hypothesis_profile({}) == "default"
    assert hypothesis_profile({"CI": "false"}) == "default"
    assert not settings.get_profile("default").derandomize


def test_this_run_uses_the_profile_its_environment_asks_for() -> None:
    assert settings.default.derandomize == (hypothesis_profile(os.environ) == "ci")
