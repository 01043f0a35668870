"""socirun runs as root: what it starts, creates and reads on the host must not be steerable by other users or by
the image (issue 12: the -d reaper's import path, the data root's modes and volume mount flags, the image's
passwd/group read inside its layers, --cidfile, the container name reservation)."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from socirun.containerd.types import Mount
from socirun.errors import SocirunError
from socirun.runtime import reaper
from socirun.runtime.container import CidFile
from socirun.runtime.image_users import MAX_FILE_BYTES, read_layer_file, read_rootfs_file, resolve_user
from socirun.runtime.lifecycle import (
    NameHolder,
    prepare_data_root,
    release_name,
    reserve_name,
    tightened_mode,
)
from socirun.runtime.options import VolumeSpec
from socirun.runtime.volumes import resolve_volumes

T = TypeVar("T")
IS_ROOT = os.geteuid() == 0


def within(seconds: float, fn: Callable[[], T]) -> T:
    """fn's result, failing the test (instead of hanging it) when fn does not return in time."""
    box: list[T] = []
    thread = threading.Thread(target=lambda: box.append(fn()), daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"did not return within {seconds} s"
    assert box, "raised (see the thread's traceback above)"
    return box[0]


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    yield
    os.umask(old)


# ---------------------------------------------------------------------------------------------- 1: the -d reaper


def _plant(where: Path, marker: Path) -> None:
    """A `socirun` package whose every module writes `marker` when imported."""
    code = f"open({str(marker)!r}, 'w').write('planted code ran')\n"
    for module in ("socirun/__init__.py", "socirun/runtime/__init__.py", "socirun/runtime/reaper.py"):
        (where / module).parent.mkdir(parents=True, exist_ok=True)
        (where / module).write_text(code)


@pytest.mark.parametrize("planted_via", ["cwd", "PYTHONPATH"])
def test_reaper_never_imports_a_socirun_planted_in_the_cwd_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, planted_via: str
) -> None:
    planted = tmp_path / "planted"
    marker = tmp_path / "marker"
    _plant(planted, marker)
    if planted_via == "cwd":
        monkeypatch.chdir(planted)
    else:
        monkeypatch.setenv("PYTHONPATH", str(planted))
    state = tmp_path / "no-state"  # the real reaper fails on it at once, with its own sentence
    proc = reaper.start(str(state), str(tmp_path / "log"), [str(tmp_path / "fifo")], stderr=subprocess.PIPE)
    _, err = proc.communicate(timeout=60)
    assert not marker.exists(), "the reaper imported the planted socirun"
    assert proc.returncode == 1 and b"socirun reaper:" in err, err  # it is socirun's own reaper that ran


def test_reaper_command_is_isolated_and_refuses_relative_paths() -> None:
    argv = reaper.command("/s", "/s/log", ["/s/out"])
    assert argv[:3] == [sys.executable, "-I", "-c"] and argv[-4:] == ["/s", "--log", "/s/log", "/s/out"]
    assert '""' not in argv[4] and '"."' not in argv[4]  # no cwd-relative import path handed over
    with pytest.raises(ValueError, match="absolute"):
        reaper.start("state", "/s/log", ["/s/out"])


# ---------------------------------------------------------------------------------------------- 2: data root, volumes


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    ("mode", "limit", "expected"),
    [(0o755, 0o711, 0o711), (0o711, 0o711, None), (0o700, 0o711, None), (0o777, 0o700, 0o700),
     (0o4755, 0o711, 0o711), (0o750, 0o700, 0o700)],
)  # fmt: skip
def test_tightened_mode(mode: int, limit: int, expected: int | None) -> None:
    assert tightened_mode(stat.S_IFDIR | mode, limit) == expected


def test_a_new_data_root_is_0711_and_its_state_and_volumes_0700(tmp_path: Path, umask_022: None) -> None:
    root = tmp_path / "var" / "lib" / "socirun"
    prepare_data_root(str(root))
    assert _mode(root) == 0o711
    for sub in ("containers", "volumes", "names"):
        assert _mode(root / sub) == 0o700, sub


def test_an_existing_loose_data_root_is_repaired(tmp_path: Path, umask_022: None) -> None:
    root = tmp_path / "data"
    (root / "volumes" / "default" / "v" / "_data").mkdir(parents=True)
    (root / "containers").mkdir()
    os.chmod(root, 0o755)
    os.chmod(root / "volumes", 0o777)
    os.chmod(root / "containers", 0o755)
    prepare_data_root(str(root))
    assert (_mode(root), _mode(root / "volumes"), _mode(root / "containers")) == (0o711, 0o700, 0o700)
    assert _mode(root / "volumes" / "default" / "v" / "_data") == 0o755  # what the container sees is kept
    os.chmod(root, 0o700)  # tighter than needed: left alone
    prepare_data_root(str(root))
    assert _mode(root) == 0o700


def test_a_data_root_that_is_a_file_is_one_sentence(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(SocirunError, match="cannot prepare socirun's data root"):
        prepare_data_root(str(tmp_path / "file"))


def test_volumes_are_mounted_nosuid_nodev_and_binds_keep_dockers_options(tmp_path: Path) -> None:
    specs = [VolumeSpec("volume", "named", "/n"), VolumeSpec("volume", "", "/anon"),
             VolumeSpec("bind", str(tmp_path), "/b")]  # fmt: skip
    got = {m.destination: m.options for m in resolve_volumes(specs, ["/img"], str(tmp_path / "d"), "ns", "/").mounts}
    for target in ("/n", "/anon", "/img"):
        assert "nosuid" in got[target] and "nodev" in got[target], (target, got[target])
    assert "nosuid" not in got["/b"] and "nodev" not in got["/b"]


@pytest.mark.parametrize("name", ["vol\n", "a/../../x", ".hidden", "x"])
def test_volume_names_are_matched_whole(tmp_path: Path, name: str) -> None:
    with pytest.raises(SocirunError, match="invalid characters for a local volume name"):
        resolve_volumes([VolumeSpec("volume", name, "/v")], [], str(tmp_path), "ns", "/")
    assert not (tmp_path / "volumes").exists()


# ---------------------------------------------------------------------------------------------- 3: passwd in layers


@pytest.fixture
def layer(tmp_path: Path) -> Path:
    root = tmp_path / "layer"
    (root / "etc").mkdir(parents=True)
    return root


def test_a_symlink_to_dev_zero_is_not_followed_onto_the_host(layer: Path) -> None:
    (layer / "etc" / "passwd").symlink_to("/dev/zero")
    assert within(5, lambda: read_layer_file([str(layer)], "/etc/passwd")) is None


@pytest.mark.skipif(not IS_ROOT, reason="mknod needs root")
def test_a_device_node_in_the_layer_is_not_read(layer: Path) -> None:
    (layer / "dev").mkdir()
    os.mknod(layer / "dev" / "zero", stat.S_IFCHR | 0o666, os.makedev(1, 5))
    (layer / "etc" / "passwd").symlink_to("/dev/zero")
    os.mknod(layer / "etc" / "group", stat.S_IFCHR | 0o666, os.makedev(1, 5))
    assert within(5, lambda: read_layer_file([str(layer)], "/etc/passwd")) is None
    assert within(5, lambda: read_layer_file([str(layer)], "/etc/group")) is None


def test_a_fifo_does_not_hang(layer: Path) -> None:
    os.mkfifo(layer / "etc" / "passwd")
    assert within(5, lambda: read_layer_file([str(layer)], "/etc/passwd")) is None


@pytest.mark.parametrize("target", ["/proc/self/fd/0", "/proc/self/environ", "../../../../../../../etc/hostname"])
def test_host_paths_stay_inside_the_layers(layer: Path, target: str) -> None:
    (layer / "etc" / "passwd").symlink_to(target)
    assert within(5, lambda: read_layer_file([str(layer)], "/etc/passwd")) is None


def test_an_absolute_symlink_resolves_inside_the_root(layer: Path) -> None:
    (layer / "etc" / "real_passwd").write_text("app:x:1000:1000::/:/bin/sh\n")
    (layer / "etc" / "passwd").symlink_to("/etc/real_passwd")
    (layer / "etc" / "group").symlink_to("../../../../../etc/real_passwd")  # `..` stops at the layers' root
    assert read_layer_file([str(layer)], "/etc/passwd") == b"app:x:1000:1000::/:/bin/sh\n"
    assert read_layer_file([str(layer)], "/etc/group") == b"app:x:1000:1000::/:/bin/sh\n"
    assert read_layer_file([str(layer)], "/../../etc/real_passwd") == b"app:x:1000:1000::/:/bin/sh\n"


def test_a_symlinked_directory_is_followed_inside_the_root_only(tmp_path: Path) -> None:
    inside, outside = tmp_path / "inside", tmp_path / "outside"
    (inside / "usr" / "etc").mkdir(parents=True)
    (inside / "usr" / "etc" / "passwd").write_text("inside\n")
    (inside / "etc").symlink_to("/usr/etc")
    assert read_layer_file([str(inside)], "/etc/passwd") == b"inside\n"
    outside.mkdir()
    (outside / "etc").symlink_to(str(tmp_path / "inside" / "usr" / "etc"))  # a host path: not one inside
    assert read_layer_file([str(outside)], "/etc/passwd") is None


def test_symlink_loops_and_files_used_as_directories_are_absent(layer: Path) -> None:
    (layer / "etc" / "passwd").symlink_to("passwd")
    (layer / "etc" / "group").write_text("g\n")
    assert within(5, lambda: read_layer_file([str(layer)], "/etc/passwd")) is None
    assert read_layer_file([str(layer)], "/etc/group/x") is None
    assert read_layer_file([str(layer)], "/etc") is None


def test_a_file_over_the_cap_is_one_sentence(layer: Path) -> None:
    (layer / "etc" / "passwd").write_bytes(b"x" * (MAX_FILE_BYTES + 1))
    (layer / "etc" / "group").write_bytes(b"y" * MAX_FILE_BYTES)
    with pytest.raises(SocirunError, match=r"the image's /etc/passwd is larger than 1024 KiB"):
        read_layer_file([str(layer)], "/etc/passwd")
    assert read_layer_file([str(layer)], "/etc/group") == b"y" * MAX_FILE_BYTES


def _overlay(upper: Path, *lowers: Path) -> Mount:
    return Mount(type="overlay", source="overlay",
                 options=(f"lowerdir={':'.join(map(str, lowers))}", f"upperdir={upper}", "workdir=/w"))  # fmt: skip


def test_whiteouts_and_opaque_directories_hide_lower_layers(tmp_path: Path) -> None:
    upper, lower = tmp_path / "up", tmp_path / "low"
    for d in (upper, lower):
        (d / "etc").mkdir(parents=True)
    (lower / "etc" / "passwd").write_text("lower\n")
    (lower / "etc" / "group").write_text("lower\n")
    (lower / "etc" / "hosts").write_text("lower\n")
    (upper / "etc" / ".wh.passwd").write_text("")  # OCI whiteout
    mounts = [_overlay(upper, lower)]
    assert read_rootfs_file(mounts, "/etc/passwd") is None
    assert read_rootfs_file(mounts, "/etc/group") == "lower\n"
    (upper / "etc" / ".wh..wh..opq").write_text("")  # opaque directory: nothing of the lower etc/ shows
    assert read_rootfs_file(mounts, "/etc/group") is None
    assert read_rootfs_file(mounts, "/etc/hosts") is None


@pytest.mark.skipif(not IS_ROOT, reason="overlayfs whiteouts (0/0 devices, trusted.* xattrs) need root")
def test_overlayfs_whiteouts_and_opaque_xattr(tmp_path: Path) -> None:
    upper, mid, lower = tmp_path / "up", tmp_path / "mid", tmp_path / "low"
    for d in (upper, mid, lower):
        (d / "etc").mkdir(parents=True)
    (lower / "etc" / "passwd").write_text("lower\n")
    (lower / "etc" / "group").write_text("lower\n")
    os.mknod(mid / "etc" / "passwd", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    mounts = [_overlay(upper, mid, lower)]
    assert read_rootfs_file(mounts, "/etc/passwd") is None
    assert read_rootfs_file(mounts, "/etc/group") == "lower\n"
    try:
        os.setxattr(mid / "etc", "trusted.overlay.opaque", b"y")
    except OSError as err:
        pytest.skip(f"no trusted.* xattrs here: {err}")
    assert read_rootfs_file(mounts, "/etc/group") is None


def test_upper_wins_and_a_lower_directory_under_an_upper_file_is_hidden(tmp_path: Path) -> None:
    upper, lower = tmp_path / "up", tmp_path / "low"
    (upper / "etc").mkdir(parents=True)
    (lower / "etc" / "sub").mkdir(parents=True)
    (lower / "etc" / "sub" / "f").write_text("lower\n")
    (lower / "etc" / "passwd").write_text("lower\n")
    (upper / "etc" / "passwd").write_text("upper\n")
    (upper / "etc" / "sub").write_text("a file now\n")
    mounts = [_overlay(upper, lower)]
    assert read_rootfs_file(mounts, "/etc/passwd") == "upper\n"
    assert read_rootfs_file(mounts, "/etc/sub/f") is None


def test_an_image_passwd_with_a_bad_uid_is_one_sentence() -> None:
    passwd = "app:x:abc:1000::/:/bin/sh\nother:x:1001:1²::/:/bin/sh\n"
    with pytest.raises(SocirunError, match="invalid uid 'abc' for 'app' in the image's /etc/passwd"):
        resolve_user("app", passwd, None)
    with pytest.raises(SocirunError, match="invalid gid"):
        resolve_user("other", passwd, None)
    with pytest.raises(SocirunError, match="unable to find user ²"):  # a name, as containerd's Atoi refuses it
        resolve_user("²", passwd, None)
    with pytest.raises(SocirunError, match="invalid user"):
        resolve_user(str(1 << 40), passwd, None)
    with pytest.raises(SocirunError, match="invalid gid 'x'"):
        resolve_user("0:grp", None, "grp:x:x:\n")


# ---------------------------------------------------------------------------------------------- 12: --cidfile


def test_an_existing_cidfile_is_dockers_sentence_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "cid"
    path.write_text("other")
    with pytest.raises(SocirunError) as info:
        CidFile(str(path))
    assert info.value.exit_code == 125
    assert info.value.message == ("Container ID file found, make sure the other container isn't running or delete "
                                  f"{path}")  # fmt: skip
    assert path.read_text() == "other"


def test_a_dangling_symlink_at_the_cidfile_path_is_not_followed(tmp_path: Path) -> None:
    path, target = tmp_path / "cid", tmp_path / "target"
    path.symlink_to(target)
    with pytest.raises(SocirunError, match="Container ID file found"):
        CidFile(str(path))
    assert not target.exists() and path.is_symlink()


def test_the_cidfile_is_removed_unless_an_id_was_written(tmp_path: Path) -> None:
    unused = CidFile(str(tmp_path / "a"))
    assert (tmp_path / "a").exists()
    unused.close()
    assert not (tmp_path / "a").exists()
    used = CidFile(str(tmp_path / "b"))
    used.write("f" * 64)
    used.close()
    assert (tmp_path / "b").read_text() == "f" * 64
    with pytest.raises(SocirunError, match=r"failed to create the container ID file: open .*: no such file"):
        CidFile(str(tmp_path / "missing" / "cid"))


# ---------------------------------------------------------------------------------------------- 16: names


async def _none() -> str | None:
    return None


async def _absent(_: str) -> bool:
    return False


def test_of_two_concurrent_reservations_of_one_name_exactly_one_wins(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from socirun.runtime import lifecycle

    read_holder = lifecycle._read_holder

    def slow_read_holder(path: str) -> NameHolder | None:
        found = read_holder(path)
        time.sleep(0.05)  # a slow check: without one lock over check and claim, both contenders see a free name
        return found

    monkeypatch.setattr(lifecycle, "_read_holder", slow_read_holder)
    for round_ in range(3):
        name = f"race{round_}"
        barrier = threading.Barrier(2)
        outcomes: dict[str, str] = {}

        def contend(cid: str, name: str = name, barrier: threading.Barrier = barrier,
                    outcomes: dict[str, str] = outcomes) -> None:  # fmt: skip
            barrier.wait()
            try:
                asyncio.run(reserve_name(str(tmp_path), "ns", name, cid, labelled=_none, container_exists=_absent))
                outcomes[cid] = "won"
            except SocirunError as err:
                outcomes[cid] = err.message

        threads = [threading.Thread(target=contend, args=(c * 64,)) for c in "ab"]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(v == "won" for v in outcomes.values()) == [False, True], outcomes
        winner = next(k for k, v in outcomes.items() if v == "won")
        loser = next(v for v in outcomes.values() if v != "won")
        assert loser == (f'Conflict. The container name "/{name}" is already in use by container "{winner}". '
                         "You have to remove (or rename) that container to be able to reuse that name.")


def test_a_stale_reservation_is_taken_over_and_a_live_container_keeps_its_name(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    import json

    import psutil

    names = tmp_path / "names" / "ns"
    names.mkdir(parents=True)
    stale = NameHolder("c" * 64, dead.pid, psutil.Process().create_time() - 1000)
    (names / "web").write_text(json.dumps(stale.__dict__))

    async def exists(cid: str) -> bool:
        return cid == "c" * 64

    with pytest.raises(SocirunError, match=f'in use by container "{"c" * 64}"'):
        asyncio.run(reserve_name(str(tmp_path), "ns", "web", "d" * 64, labelled=_none, container_exists=exists))
    asyncio.run(reserve_name(str(tmp_path), "ns", "web", "d" * 64, labelled=_none, container_exists=_absent))
    assert json.loads((names / "web").read_text())["id"] == "d" * 64
    asyncio.run(release_name(str(tmp_path), "ns", "web", "e" * 64))  # not its holder: nothing happens
    assert (names / "web").exists()
    asyncio.run(release_name(str(tmp_path), "ns", "web", "d" * 64))
    assert not (names / "web").exists()


def test_a_container_already_labelled_with_the_name_conflicts(tmp_path: Path) -> None:
    async def labelled() -> str | None:
        return "f" * 64

    with pytest.raises(SocirunError, match=f'in use by container "{"f" * 64}"'):
        asyncio.run(reserve_name(str(tmp_path), "ns", "web", "d" * 64, labelled=labelled, container_exists=_absent))


@pytest.mark.parametrize("name", ["web\n", "../x", "a", "-web"])
def test_container_names_are_matched_whole(tmp_path: Path, name: str) -> None:
    with pytest.raises(SocirunError, match="Invalid container name"):
        asyncio.run(reserve_name(str(tmp_path), "ns", name, "d" * 64, labelled=_none, container_exists=_absent))


def test_a_namespace_with_a_trailing_newline_is_refused() -> None:
    from socirun.containerd.client import resolve_namespace
    from socirun.errors import UsageError

    with pytest.raises(UsageError, match="invalid containerd namespace"):
        resolve_namespace("default\n", {})
    assert resolve_namespace("default", {}) == "default"


def test_within_helper_fails_on_a_hang() -> None:
    with pytest.raises(AssertionError, match="did not return"):
        within(0.1, lambda: time.sleep(1))
