"""What CI runs: the derandomized property tests, the README's test command, and the check that
a Redis test leaves no connection open."""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest
from _helpers import hypothesis_profile
from _redis import no_leaks
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


def _leave_a_socket_in_a_cycle() -> None:
    left: list[Any] = [socket.socket()]
    left.append(left)  # only the collector frees it


def test_the_leak_check_finds_a_connection_the_test_left_in_a_cycle() -> None:
    # Objects from before the test are frozen out of the collector's sight while it runs
    # (tests/_redis.py): what the test itself left for the collector must still be found.
    check = no_leaks()
    check.__enter__()
    _leave_a_socket_in_a_cycle()
    with pytest.raises(pytest.fail.Exception, match=r"left open by this test(.|\n)*unclosed"):
        check.__exit__(None, None, None)
