"""The layout's two purest rules, checked by importing in a fresh interpreter (import-linter checks the rest in
scripts/test.sh): the decisions load no adapter, engine or face; the faces load no adapter and no engine."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys

import pytest

import socirun.decide
import socirun.ui

ADAPTERS = ("socirun.containerd", "socirun.registry", "socirun.soci")
ENGINE = ("socirun.pull", "socirun.runtime")


def modules_of(package: object) -> list[str]:
    path = package.__path__  # type: ignore[attr-defined]
    prefix = package.__name__ + "."  # type: ignore[attr-defined]
    return [prefix.rstrip(".")] + [m.name for m in pkgutil.walk_packages(path, prefix)]


def loaded_after_importing(modules: list[str]) -> list[str]:
    code = ("import importlib, json, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "print(json.dumps(sorted(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return list(json.loads(done.stdout))


def offending(loaded: list[str], packages: tuple[str, ...]) -> list[str]:
    return [m for m in loaded if any(m == p or m.startswith(p + ".") for p in packages)]


def test_decide_loads_no_adapter_engine_or_face() -> None:
    modules = modules_of(socirun.decide)
    assert len(modules) >= 3  # the package, facts, plan, transfer
    loaded = loaded_after_importing(modules)
    assert "socirun.decide.plan" in loaded and "socirun.decide.transfer" in loaded
    assert offending(loaded, (*ADAPTERS, *ENGINE, "socirun.ui", "socirun.commands", "socirun.sandbox")) == []


def test_ui_loads_no_adapter_or_engine() -> None:
    modules = modules_of(socirun.ui)
    loaded = loaded_after_importing(modules)
    assert "socirun.ui.tui.app" in loaded and "socirun.ui.progress" in loaded
    assert offending(loaded, (*ADAPTERS, *ENGINE, "socirun.commands", "socirun.sandbox")) == []


@pytest.mark.parametrize("packages", [("socirun.containerd",), ("socirun.pull",)])
def test_the_check_would_see_a_forbidden_module(packages: tuple[str, ...]) -> None:
    """The probe is not vacuous: importing the engine does load an adapter."""
    loaded = loaded_after_importing(["socirun.pull.engine"])
    assert offending(loaded, packages)
