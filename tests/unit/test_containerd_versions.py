"""Which containerd the sandbox starts (`sandbox up --containerd PATH`), the config schema its `--version` picks,
the ctr that goes with it, and what `doctor` says differs for socirun between 1.6 and 2.x."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest

from socirun.commands.doctor import render, version_notes
from socirun.errors import SandboxError
from socirun.sandbox.components import config_version_for, containerd_major, ctr_beside, resolve_containerd
from socirun.sandbox.sandbox import Sandbox
from tests.support.sandbox import containerd_choice

DEBIAN = "containerd github.com/containerd/containerd 1.6.20~ds1 1.6.20~ds1-1+deb12u3"
BUILT = "containerd github.com/containerd/containerd/v2 v2.4.2"


def fake_containerd(directory: Path, printed: str) -> Path:
    """A `containerd` that prints `printed` for --version and exits at once otherwise (so `up` stops after it
    wrote the config)."""
    directory.mkdir(parents=True, exist_ok=True)
    binary = directory / "containerd"
    binary.write_text(f"#!/bin/sh\n[ \"$1\" = --version ] && echo '{printed}'\nexit 1\n")
    binary.chmod(0o755)
    return binary


def test_major_version_of_what_containerd_prints() -> None:
    assert containerd_major("1.6.20~ds1 1.6.20~ds1-1+deb12u3") == 1
    assert containerd_major("v2.4.2") == 2
    assert containerd_major("unknown (FileNotFoundError)") is None
    assert containerd_major("") is None
    assert (config_version_for(1), config_version_for(2)) == (2, 3)


@pytest.mark.skipif(shutil.which("runc") is None or shutil.which("docker-registry") is None,
                    reason="the sandbox checks runc and docker-registry are installed")
@pytest.mark.parametrize(("printed", "schema"), [(DEBIAN, 2), (BUILT, 3)])
def test_up_writes_the_config_schema_of_the_given_containerd(tmp_path: Path, printed: str, schema: int) -> None:
    binary = fake_containerd(tmp_path / "bin", printed)
    box = Sandbox(tmp_path / "box")
    with pytest.raises(SandboxError, match="containerd exited during startup"):
        box.up(containerd=str(binary))
    config = tomllib.loads(box.containerd_config_path.read_text())
    assert config["version"] == schema


def test_up_refuses_what_is_not_containerd(tmp_path: Path) -> None:
    box = Sandbox(tmp_path / "box")
    with pytest.raises(SandboxError, match="is not an executable file"):
        box.up(containerd=str(tmp_path / "missing"))
    with pytest.raises(SandboxError, match="printed no containerd version"):
        box.up(containerd=str(fake_containerd(tmp_path / "bin", "hello")))
    assert not box.containerd_config_path.exists()


def test_soci_sandbox_refuses_containerd_1(tmp_path: Path) -> None:
    if shutil.which("soci-snapshotter-grpc") is None and not Path("/opt/socirun/bin/soci-snapshotter-grpc").exists():
        pytest.skip("soci-snapshotter-grpc is not built")
    box = Sandbox(tmp_path / "box")
    with pytest.raises(SandboxError, match=r"needs containerd 2\.x"):
        box.up(soci=True, containerd=str(fake_containerd(tmp_path / "bin", DEBIAN)))


def test_a_bare_name_is_looked_up_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    binary = fake_containerd(tmp_path / "bin", BUILT)
    monkeypatch.setenv("PATH", str(binary.parent))
    assert resolve_containerd("containerd") == str(binary)
    with pytest.raises(SandboxError, match="not found on PATH"):
        resolve_containerd("containerd-nope")


def test_ctr_is_the_one_beside_containerd(tmp_path: Path) -> None:
    binary = fake_containerd(tmp_path / "bin", BUILT)
    ctr = tmp_path / "bin" / "ctr"
    ctr.write_text("#!/bin/sh\n")
    ctr.chmod(0o755)
    assert ctr_beside(str(binary)) == str(ctr)
    ctr.unlink()
    assert ctr_beside(str(binary)) != str(ctr)  # falls back to PATH's


def test_pytest_option_names_a_binary_or_says_why_not(tmp_path: Path) -> None:
    binary = fake_containerd(tmp_path / "bin", BUILT)
    assert containerd_choice(str(binary)) == (str(binary), "")
    missing, reason = containerd_choice(str(tmp_path / "nope"))
    assert missing is None and "--containerd" in reason and "not an executable file" in reason


def test_doctor_says_what_differs_on_2x() -> None:
    lines = render(version_notes("v2.4.2", cgroup_v2=False))
    assert lines[0].startswith("[ok  ] containerd 2.x: config `version = 3`")
    assert "transfer service" in lines[0]
    assert lines[1].startswith("[note] cgroup v1: containerd 2.2+ deprecates cgroup v1")
    assert [c.name for c in version_notes("v2.4.2", cgroup_v2=True)] == ["containerd 2.x"]
    assert [c.name for c in version_notes("v2.1.4", cgroup_v2=False)] == ["containerd 2.x"]  # before the deprecation


def test_doctor_says_1_6_cannot_serve_soci() -> None:
    (note,) = version_notes("1.6.20~ds1", cgroup_v2=False)
    assert note.name == "containerd 1.6" and "`version = 2`" in note.detail and "needs containerd 2.x" in note.detail
    assert version_notes("1.7.27", cgroup_v2=False) == []
    assert version_notes("not a version", cgroup_v2=False) == []
