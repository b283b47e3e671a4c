"""Sharded export: one customer set split into disjoint ``dateCreated`` windows, exported in parts.

::

    from dmhub_async import DMHubClient
    from dmhub_async.shards import export_sharded, merge

    async with DMHubClient() as dm:
        manifest = await export_sharded(dm, "export-dir", shards=8, stage="lead")
    print(manifest.status(), manifest.exported)
    merge("export-dir", "customers.jsonl")

Each shard is a small value a task queue can carry; :func:`export_shard` is all a task needs.
On a scheduler of your own (Celery, Airflow), :func:`plan_directory` writes the plan's manifest,
each task returns :func:`shard_result`, and :func:`record_results` records them: the directory
then has the late check, ``merge`` and reruns of any other sharded export.
The command line runs shards on processes (``--workers``) or on machines through arq and Redis
(``--queue``, ``dmhub-async worker``): see docs/sharding.md.
"""

from ._late import late_check
from ._manifest import MANIFEST_NAME, LateCheck, Manifest, ShardOutcome, merge, part_name
from ._plan import MAX_SHARDS, Shard, plan_shards
from ._run import export_shard, export_sharded
from ._scheduler import plan_directory, record_results, shard_result

__all__ = [
    "MANIFEST_NAME",
    "MAX_SHARDS",
    "LateCheck",
    "Manifest",
    "Shard",
    "ShardOutcome",
    "export_shard",
    "export_sharded",
    "late_check",
    "merge",
    "part_name",
    "plan_directory",
    "plan_shards",
    "record_results",
    "shard_result",
]
