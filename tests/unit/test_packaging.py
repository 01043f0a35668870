"""pyproject.toml declares its licence the way setuptools now expects (issue 13: a TOML-table licence made
`bash scripts/demo.sh` print about 50 lines of setuptools deprecation warnings). scripts/install-deps.sh now
hides pip's output unless pip fails, so a warning that came back would go unseen; these tests catch it instead.
"""

from __future__ import annotations

import re
import tomllib
import warnings
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"
# setuptools 77 is the first to read `project.license` as an SPDX expression (PEP 639); older ones want a table.
SPDX_SETUPTOOLS = Version("77")
# One SPDX licence expression: identifiers (optionally `+`, `WITH` an exception), joined by AND/OR, in brackets.
SPDX_EXPRESSION = re.compile(r"[A-Za-z0-9.+\-() ]+")
SPDX_ID = re.compile(r"(LicenseRef-)?[A-Za-z0-9][A-Za-z0-9.\-]*\+?")


def _pyproject() -> dict[str, Any]:
    with PYPROJECT.open("rb") as f:
        return tomllib.load(f)


def test_license_is_an_spdx_string_not_a_table() -> None:
    license_ = _pyproject()["project"]["license"]
    assert isinstance(license_, str), f"project.license is a {type(license_).__name__}; setuptools wants an SPDX string"
    assert SPDX_EXPRESSION.fullmatch(license_)
    words = license_.replace("(", " ").replace(")", " ").split()
    assert words and all(w in ("AND", "OR", "WITH") or SPDX_ID.fullmatch(w) for w in words)


def test_no_license_classifier_beside_the_expression() -> None:
    # PEP 639: with `project.license` an expression, `License ::` classifiers are refused by setuptools >= 77.
    classifiers = _pyproject()["project"].get("classifiers", [])
    assert not [c for c in classifiers if c.startswith("License ::")]


def test_build_requires_a_setuptools_that_reads_spdx() -> None:
    requires = [Requirement(r) for r in _pyproject()["build-system"]["requires"]]
    setuptools = [r for r in requires if r.name == "setuptools"]
    assert setuptools, "build-system.requires names no setuptools"
    # Every version the pin admits reads SPDX: the pin's lower bound is 77 or newer.
    lower = [Version(s.version) for s in setuptools[0].specifier if s.operator in (">=", "~=", "==", ">")]
    assert lower and max(lower) >= SPDX_SETUPTOOLS, f"{setuptools[0]} admits setuptools older than {SPDX_SETUPTOOLS}"


def test_setuptools_reads_pyproject_without_a_deprecation_warning() -> None:
    setuptools = pytest.importorskip("setuptools", minversion=str(SPDX_SETUPTOOLS))
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        apply_configuration(Distribution(), str(PYPROJECT))
    deprecations = [str(w.message).splitlines()[0] for w in caught
                    if issubclass(w.category, setuptools.warnings.SetuptoolsDeprecationWarning)]
    assert deprecations == []
