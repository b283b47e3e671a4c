"""The README's examples run as written: a user who copies them gets what it promises."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

import pytest
from _helpers import users_environ
from _redis import RedisServer

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


def test_exporting_customers_example_runs(tmp_path: Path) -> None:
    # Only type-checked before: the README's export, the first a user copies, never ran.
    code = _block("export_customers(")
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # it writes leads.csv (and leads.ckpt while it runs) where it is run
        env={**os.environ, "PYTHONPATH": str(README.parent)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert re.search(r"^exported +\d+ customers to leads\.csv \(csv\)$", result.stdout, re.M)
    assert (tmp_path / "leads.csv").read_text(encoding="utf-8").startswith("id,")
    assert not (tmp_path / "leads.ckpt").exists()  # a complete export removes its checkpoint


def test_per_call_options_example_prints_what_its_comments_say() -> None:
    code = _block("dm.with_options(timeout=5")
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:3] == ["5", "None", "200 application/json"]
    assert lines[3].startswith("500 40201 ")


def test_plain_http_example_prints_what_its_comment_says() -> None:
    code = _block('base_url="http://api.example.com"')
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "plain http: the secret and the access token travel in the query string" in (
        result.stdout
    )


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
        env=users_environ(),
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 passed" in result.stdout


def test_pytest_plugin_example_passes_mypy_strict(
    tmp_path: Path, mypy_strict: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    project = _user_project(tmp_path)
    result = mypy_strict(project / "test_my_job.py", cwd=project)
    assert result.returncode == 0, result.stdout + result.stderr


def _programs() -> list[str]:
    """The blocks that are whole programs: their own imports, and no ``await`` outside a function.

    The others are fragments (``dm`` from an earlier block, a notebook cell's top-level
    ``await``) that mypy cannot check alone.
    """
    programs = []
    for block in _python_blocks():
        try:
            compile(block, "README.md", "exec")
        except SyntaxError:  # 'await' outside function: a fragment
            continue
        if re.search(r"^(from|import) dmhub_async\b", block, re.M):
            programs.append(block)
    return programs


def test_readme_programs_pass_mypy_strict(
    tmp_path: Path, mypy_strict: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    # The every-operation example passed `c.id` (an `int | None`) where an int is wanted, and
    # the last_response one used an `APIResponse | None` unchecked: 9 errors for a user on
    # --strict.
    programs = _programs()
    assert any("DMHubSimulator(customers=50)" in p for p in programs)
    assert any("dm.last_response" in p for p in programs)
    files = []
    for i, program in enumerate(programs):
        files.append(tmp_path / f"readme_block_{i}.py")
        files[-1].write_text(program, encoding="utf-8")
    # This checkout's package (not an installed one), and a user's --strict, alone.
    result = mypy_strict(*files, cwd=tmp_path, mypy_path=README.parent)
    assert result.returncode == 0, result.stdout + result.stderr


# The README's python blocks, each run by a test: a whole program by its own test (the marker
# it is found by), a fragment (`dm` from an earlier block, a notebook cell's top-level
# `await`) by test_every_readme_fragment_runs. A new block must be added to one of them.
README_PROGRAMS = [
    'DMHubClient(app_id="...", secret="...") as dm:\n        c = await',
    "DMHubSimulator(customers=50)",
    "lookup_iter(huge()",
    "export_customers(",
    "dm.with_options(timeout=5",
    'base_url="http://api.example.com"',
    "dmhub_simulator",
    "plan_shards(dm, 4)",
]
README_FRAGMENTS = {
    "notebook": "dm = DMHubClient()  # DMHUB_APP_ID",
    "walking lists": "dm.customers.list(max_items=500).pages()",
    "a broken walk": "except ResponseDecodeError as err:",
    "a token file": 'FileTokenStore("/var/lib/my-service/',
}


def test_every_python_block_of_the_readme_is_run() -> None:
    # The quick start (type-checked only), the notebook cell, the pagination walk, the
    # broken-walk handler and the FileTokenStore block were run by no test, and the four
    # fragments not type-checked either: a user copies them all the same.
    markers = [*README_PROGRAMS, *README_FRAGMENTS.values()]
    for block in _python_blocks():
        found = [marker for marker in markers if marker in block]
        assert len(found) == 1, f"no test runs this README block (or two claim it):\n{block}"
    assert len(_python_blocks()) == len(markers)


_FRAGMENT_HOME = """\
import asyncio
import os

import dmhub_async
from dmhub_async import DMHubClient  # as the quick start imports it, before a notebook's cell
from dmhub_async.testing import DMHubSimulator


async def main() -> None:
    async with DMHubSimulator(customers=300, seed=3) as sim:
        # As a user's service has them: DMHubClient() reads the environment.
        os.environ.update(DMHUB_APP_ID=sim.app_id, DMHUB_SECRET=sim.secret, DMHUB_BASE_URL=sim.url)
        async with dmhub_async.DMHubClient() as dm:  # the fragment may import the name itself
{fragment}
        async with dmhub_async.DMHubClient() as after:  # the notebook's closes its `dm`
            print("fragment done:", await after.customers.count())


asyncio.run(main())
"""


def _fragment_program(marker: str, tokens: Path) -> str:
    (block,) = [b for b in _python_blocks() if marker in b]
    block = textwrap.dedent(block).replace("/var/lib/my-service", str(tokens))
    return _FRAGMENT_HOME.format(fragment=textwrap.indent(block, " " * 12))


@pytest.mark.parametrize("marker", README_FRAGMENTS.values(), ids=README_FRAGMENTS.keys())
def test_every_readme_fragment_runs(tmp_path: Path, marker: str) -> None:
    program = _fragment_program(marker, tmp_path / "tokens")
    result = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**users_environ(), "PYTHONPATH": str(README.parent)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "fragment done: 300" in result.stdout
    assert "Warning" not in result.stderr, result.stderr
    if "pages()" in marker:  # page.number, len(page.items), page.total_records
        assert re.search(r"^1 100 300$", result.stdout, re.M), result.stdout


def test_readme_fragments_pass_mypy_strict(
    tmp_path: Path, mypy_strict: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    files = []
    for i, marker in enumerate(README_FRAGMENTS.values()):
        files.append(tmp_path / f"readme_fragment_{i}.py")
        files[-1].write_text(_fragment_program(marker, tmp_path / "tokens"), encoding="utf-8")
    result = mypy_strict(*files, cwd=tmp_path, mypy_path=README.parent)
    assert result.returncode == 0, result.stdout + result.stderr


# The quick start's credentials are the user's: here the environment's, naming a simulator
# served from a thread, as DMHubClient() reads them.
_QUICK_START_PRELUDE = """\
import asyncio, os, threading
from dmhub_async.testing import DMHubSimulator

_loop = asyncio.new_event_loop()
threading.Thread(target=_loop.run_forever, daemon=True).start()
_sim = asyncio.run_coroutine_threadsafe(DMHubSimulator(customers=40).__aenter__(), _loop).result()
os.environ.update(DMHUB_APP_ID=_sim.app_id, DMHUB_SECRET=_sim.secret, DMHUB_BASE_URL=_sim.url)
"""


def test_quick_start_runs() -> None:
    code = _block(README_PROGRAMS[0])
    assert code.count('DMHubClient(app_id="...", secret="...")') == 1
    code = code.replace('DMHubClient(app_id="...", secret="...")', "DMHubClient()")
    result = subprocess.run(
        [sys.executable, "-c", _QUICK_START_PRELUDE + code],
        capture_output=True,
        text=True,
        timeout=60,
        env={**users_environ(), "PYTHONPATH": str(README.parent)},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    first, *leads = result.stdout.splitlines()
    assert re.fullmatch(r"\d+ 小D \d{4}-\d\d-\d\d \d\d:\d\d:\d\d\+00:00", first), first
    assert leads, result.stdout  # the leads it walked, one a line
    assert all(re.fullmatch(r"\d+ .*", line) for line in leads), leads


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
    assert "complete 3000 merged: 3000" in result.stdout


def test_the_command_line_synopsis_names_every_flag() -> None:
    # The README's synopsis is where a user looks a flag up: `demo --concurrency`, `lookup
    # --allow-insecure-http`, `export --shards` and the `worker` and `merge` commands were
    # missing from it, though --help had them.
    import argparse

    from dmhub_async.cli import build_parser

    text = README.read_text(encoding="utf-8")
    synopsis = next(b for b in re.findall(r"```text\n(.*?)```", text, re.S) if "dmhub-async" in b)
    usage: dict[str, str] = {}
    command = ""
    for line in synopsis.splitlines():
        if line.startswith("dmhub-async "):
            command = line.split()[1]
        usage[command] = usage.get(command, "") + line + "\n"
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    missing = {}
    for name, parser in commands.choices.items():
        flags = [
            action.option_strings
            for action in parser._actions
            if action.option_strings and "--help" not in action.option_strings
        ]
        said = usage.get(name, "")
        gone = [f[-1] for f in flags if not any(re.search(rf"{o}\b", said) for o in f)]
        if gone:
            missing[name] = gone
    assert not missing, missing


def test_the_readme_gives_the_bound_on_a_walk_that_makes_no_progress() -> None:
    # The README said a walk stops after 40 pages without progress (and past twice the largest
    # total plus 40); the bound was raised to 72 so that a long drift repair never trips it,
    # and a user sizing a timeout on the README's figure got 32 more requests.
    from dmhub_async._pagination_plan import MAX_READS_WITHOUT_PROGRESS as BOUND

    text = " ".join(README.read_text(encoding="utf-8").split())
    assert f"{BOUND} pages in a row that bring no new record" in text
    assert f"reported, plus {BOUND} (`hasNext` true for ever)" in text


def test_the_error_tree_names_every_error_the_sdk_raises() -> None:
    # TokenStoreError (a token store failed, was too slow, or is unsafe) was missing from the
    # README's tree, so code catching "every DMHubError subclass" as listed missed it.
    import dmhub_async
    from dmhub_async import DMHubError

    text = README.read_text(encoding="utf-8")
    tree = next(b for b in re.findall(r"```text\n(.*?)```", text, re.S) if "DMHubError" in b)
    errors = {
        name
        for name in dmhub_async.__all__
        if isinstance(getattr(dmhub_async, name), type)
        and issubclass(getattr(dmhub_async, name), DMHubError)
    }
    assert errors == {"DMHubError", *re.findall(r"\+-- (\w+)", tree)}


DOCS = README.parent / "docs"

# docs/*.md's python blocks, each run by a test below: a new one must be added here and run.
DOCS_EXAMPLES = {"sharding.md": ["def export_part("]}


def _docs_blocks() -> dict[str, list[str]]:
    return {
        page.name: re.findall(r"```python\n(.*?)```", page.read_text(encoding="utf-8"), re.S)
        for page in sorted(DOCS.glob("*.md"))
    }


def test_every_python_example_of_the_docs_is_run() -> None:
    found = {
        name: [marker for marker in DOCS_EXAMPLES.get(name, []) if any(marker in b for b in blocks)]
        for name, blocks in _docs_blocks().items()
        if blocks
    }
    assert found == DOCS_EXAMPLES
    assert {name: len(blocks) for name, blocks in _docs_blocks().items() if blocks} == {
        name: len(markers) for name, markers in DOCS_EXAMPLES.items()
    }


# A stand-in for celery (not a dependency): its task decorator hands the function back, so the
# docs' task runs as a worker would run it, against a simulator served from a thread.
_CELERY_STUB = """
class Celery:
    def __init__(self, *args, **kwargs):
        pass

    def task(self, **options):
        return lambda function: function
"""

_CELERY_DRIVER = """
import asyncio, json, os, sys, threading
from dmhub_async.testing import DMHubSimulator

loop = asyncio.new_event_loop()
threading.Thread(target=loop.run_forever, daemon=True).start()
sim = asyncio.run_coroutine_threadsafe(DMHubSimulator(customers=300).__aenter__(), loop).result()
os.environ.update(DMHUB_APP_ID=sim.app_id, DMHUB_SECRET=sim.secret, DMHUB_BASE_URL=sim.url)


async def sign_up():
    return sim.insert_customer({"name": "signed up after its shard ended"})


directory, dest = sys.argv[1], sys.argv[2]
sent = plan(directory, 3)
results = [export_part(s, directory) for s in json.loads(json.dumps(sent))]
assert all(r["complete"] for r in results), results
late = asyncio.run_coroutine_threadsafe(sign_up(), loop).result()
print(finish(json.loads(json.dumps(results)), directory, dest))
print("planned again:", len(plan(directory, 3)), "still to do")
"""


# Celery as a type checker sees it with its stubs: a task decorator that keeps the function.
_CELERY_TYPED_STUB = """
from collections.abc import Callable
from typing import Any, TypeVar

F = TypeVar("F", bound=Callable[..., Any])


class Celery:
    def __init__(self, *args: Any, **kwargs: Any) -> None: ...
    def task(self, **options: Any) -> Callable[[F], F]: ...
"""


def test_the_celery_task_of_the_sharding_doc_passes_mypy_strict(
    tmp_path: Path, mypy_strict: Callable[..., subprocess.CompletedProcess[str]]
) -> None:
    # Its bare `dict` and `list[dict]` were 5 errors of a user's mypy --strict (type-arg).
    (block,) = [b for b in _docs_blocks()["sharding.md"] if "def export_part(" in b]
    (tmp_path / "celery.pyi").write_text(_CELERY_TYPED_STUB, encoding="utf-8")
    (tmp_path / "tasks.py").write_text(block, encoding="utf-8")
    result = mypy_strict(tmp_path / "tasks.py", cwd=tmp_path, mypy_path=README.parent)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_celery_task_of_the_sharding_doc_runs(tmp_path: Path, redis: RedisServer) -> None:
    (block,) = [b for b in _docs_blocks()["sharding.md"] if "def export_part(" in b]
    # The workers share one token through Redis (a file store is one machine's).
    assert block.count('"redis://queue.internal:6379/2"') == 1
    code = block.replace('"redis://queue.internal:6379/2"', repr(redis.url))
    (tmp_path / "celery.py").write_text(_CELERY_STUB, encoding="utf-8")
    (tmp_path / "job.py").write_text(code + _CELERY_DRIVER, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(tmp_path / "job.py"), str(tmp_path / "parts"), str(tmp_path / "all")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(README.parent)])},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # Every customer, the one signed up after the last shard ended too (the late check),
    # merged into one file; the planner run again sends nothing.
    assert "complete: 301 exported" in result.stdout
    assert "planned again: 0 still to do" in result.stdout
    lines = (tmp_path / "all").read_text(encoding="utf-8").splitlines()
    assert len(lines) == len({json.loads(line)["id"] for line in lines}) == 301
    assert len(list((tmp_path / "parts").glob("part-*.jsonl"))) == 3
    import redis as redis_py

    with redis_py.Redis.from_url(redis.url) as shared:
        assert shared.dbsize() >= 1  # the token the tasks shared
