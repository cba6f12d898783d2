"""Where the tests find the repository, its docs and the test plugins, wherever in ``tests/`` a test file sits."""

from pathlib import Path

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
# Backends and models made to misbehave, importable by name once conftest puts this folder on sys.path.
PLUGINS = TESTS / "plugins"
