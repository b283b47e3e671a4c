"""The package version (pyproject.toml reads it from here).

A ``.devN`` version while CHANGELOG.md's [Unreleased] lists changes: what runs is past the
last release and is not the next one yet.
"""

__version__ = "0.2.0.dev0"
