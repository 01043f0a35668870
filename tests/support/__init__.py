"""Helpers the tests import (streams, CLI results, sandbox helpers, TUI apps): plain modules, not conftest."""
