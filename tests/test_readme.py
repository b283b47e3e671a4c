"""The README's examples run as written: a user who copies them gets what it promises."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)


def _block(marker: str) -> str:
    found = [b for b in _python_blocks() if marker in b]
    assert len(found) == 1, f"README should hold one python block with {marker!r}"
    return found[0]


def test_readme_opens_with_the_demo_and_the_test_command() -> None:
    commands = re.findall(r"```bash\n(.*?)```", README.read_text(encoding="utf-8"), re.S)[0]
    lines = [line for line in commands.splitlines() if line.strip()]
    assert "dmhub-async demo" in lines[0]
    assert "pytest" in lines[1]
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    test_command = lines[1].split("&&")[-1].split("#")[0].strip()
    assert test_command in ci, "CI must run exactly the README's test command"


def test_every_operation_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    code = _block("DMHubSimulator(customers=50)")
    # The example calls asyncio.run itself, as a user's script would: run it in a thread-free
    # subprocess so that it owns its event loop.
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "gone: 40201" in result.stdout


def test_resolving_many_identities_example_runs() -> None:
    code = _block("lookup_iter(huge()")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "resolved" in result.stdout


def _user_project(tmp_path: Path) -> Path:
    """A project holding the README's pytest example and its pytest settings, nothing else."""
    (tmp_path / "test_my_job.py").write_text(_block("dmhub_simulator"), encoding="utf-8")
    toml = re.findall(r"```toml\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    ini = [block for block in toml if "asyncio_mode" in block]
    assert len(ini) == 1, "README should show the pytest-asyncio settings once"
    (tmp_path / "pyproject.toml").write_text(ini[0], encoding="utf-8")
    return tmp_path


def test_pytest_plugin_example_passes(tmp_path: Path) -> None:
    project = _user_project(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "error"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=project,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


def test_pytest_plugin_example_passes_mypy_strict(tmp_path: Path) -> None:
    project = _user_project(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / ".mypy_cache"),
         "test_my_job.py"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=project,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dependency_list_is_the_packages() -> None:
    project = tomllib.loads((README.parent / "pyproject.toml").read_text(encoding="utf-8"))
    dependencies = project["project"]["dependencies"]
    wanted = {re.split(r"[<>=!~\[; ]", dep, maxsplit=1)[0] for dep in dependencies}
    line = re.search(r"Dependencies: (.*?);", README.read_text(encoding="utf-8"), re.S)
    assert line is not None, "README's Install section should list the dependencies"
    listed = {name.strip() for name in line.group(1).replace("\n", " ").split(",")}
    assert listed == wanted
    extra = re.search(r"the `redis` extra adds (.*?)\.", README.read_text(encoding="utf-8"), re.S)
    assert extra is not None
    named = {n.strip() for n in extra.group(1).replace(" and ", ", ").replace("\n", " ").split(",")}
    redis_extra = project["project"]["optional-dependencies"]["redis"]
    assert named == {re.split(r"[<>=!~\[; ]", dep, maxsplit=1)[0] for dep in redis_extra}


def test_sharded_export_example_runs() -> None:
    code = _block("plan_shards(dm, 4)")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "complete 3000 lines: 3000" in result.stdout
