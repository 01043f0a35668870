"""--gpus discovery on fixture directory trees (a fake /dev and driver tree: there is no GPU here).

Device numbers come from a fake `numbers` lookup, since the fixture's /dev entries are plain files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from socirun.commands.run_flags import parse_gpus
from socirun.runtime.gpus import GpuError, driver_libraries, plan_gpus
from socirun.runtime.options import GpuRequest

LDCONFIG = """\
1234 libs found in cache `/etc/ld.so.cache'
\tlibnvidia-ml.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1
\tlibnvidia-ml.so.1 (libc6) => /usr/lib/i386-linux-gnu/libnvidia-ml.so.1
\tlibcuda.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so.1
\tlibcuda.so (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libcuda.so
\tlibc.so.6 (libc6,x86-64, OS ABI: Linux 3.2.0) => /lib/x86_64-linux-gnu/libc.so.6
\tlibnvidia-ptxjitcompiler.so.1 (libc6,x86-64) => /usr/lib/x86_64-linux-gnu/libnvidia-ptxjitcompiler.so.1
"""
MAJORS = {"nvidiactl": (195, 255), "nvidia-uvm": (507, 0), "nvidia-uvm-tools": (507, 1), "nvidia-modeset": (195, 254)}


def fake_numbers(path: str) -> tuple[str, int, int] | None:
    name = Path(path).name
    if not Path(path).exists():
        return None
    if name in MAJORS:
        return ("c", *MAJORS[name])
    if name.startswith("nvidia") and name[6:].isdigit():
        return "c", 195, int(name[6:])
    return None


def gpu_tree(root: Path, count: int = 2, *, uuids: bool = True) -> Path:
    (root / "dev").mkdir(parents=True)
    for i in range(count):
        (root / "dev" / f"nvidia{i}").touch()
        if uuids:
            info = root / "proc/driver/nvidia/gpus" / f"0000:0{i}:00.0" / "information"
            info.parent.mkdir(parents=True)
            info.write_text(f"Model: NVIDIA H200\nGPU UUID: GPU-{i}aaa\nDevice Minor: {i}\n")
    for name in ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"):
        (root / "dev" / name).touch()
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/bin/nvidia-smi").write_text("#!fake")
    (root / "usr/local/nvidia/lib64").mkdir(parents=True)
    (root / "usr/local/nvidia/lib64/libnvidia-encode.so.1").write_text("fake")
    (root / "usr/local/nvidia/lib64/libfoo.so.1").write_text("not a driver lib")
    return root


def plan(req: str, root: Path) -> object:
    return plan_gpus(parse_gpus(req), root=str(root), numbers=fake_numbers, ldconfig=lambda: LDCONFIG,
                     which=lambda name: None)  # fmt: skip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("all", GpuRequest(count=-1)),
        ("2", GpuRequest(count=2)),
        ("count=all", GpuRequest(count=-1)),
        ("device=0", GpuRequest(device_ids=("0",))),
        ('"device=0,2"', GpuRequest(device_ids=("0", "2"))),
        ('"capabilities=compute,utility",count=1',
         GpuRequest(count=1, capabilities=("compute", "utility"))),
        ("driver=nvidia", GpuRequest(count=1, driver="nvidia")),
        ("device=GPU-3f2a", GpuRequest(device_ids=("GPU-3f2a",))),
        ('all,"options=a=b"', GpuRequest(count=-1, options=(("a", "b"),))),
    ],
)
def test_gpus_grammar(text: str, expected: GpuRequest) -> None:
    assert parse_gpus(text) == expected


def test_builtin_all_injects_every_gpu_the_control_nodes_libraries_and_binaries(tmp_path: Path) -> None:
    root = gpu_tree(tmp_path)
    inj = plan("all", root)
    assert inj.method == "builtin"  # type: ignore[attr-defined]
    paths = [d.path for d in inj.devices]  # type: ignore[attr-defined]
    assert paths == ["/dev/nvidia0", "/dev/nvidia1", "/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"]
    assert inj.devices[2].major == 195 and inj.devices[2].minor == 255  # type: ignore[attr-defined]
    mounts = {m.destination: m for m in inj.mounts}  # type: ignore[attr-defined]
    assert mounts["/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"].source == "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1"
    assert "/usr/lib/x86_64-linux-gnu/libcuda.so.1" in mounts
    assert "/usr/lib/x86_64-linux-gnu/libc.so.6" not in mounts
    assert mounts["/usr/lib/x86_64-linux-gnu/libnvidia-encode.so.1"].source.endswith(
        "usr/local/nvidia/lib64/libnvidia-encode.so.1"
    )
    assert not any("libfoo" in d for d in mounts)
    assert mounts["/usr/bin/nvidia-smi"].options == ("ro", "nosuid", "nodev", "bind")
    assert inj.env == ["NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=compute,utility"]  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("req", "gpus", "visible"),
    [("device=1", ["1"], "1"), ("1", ["0"], "0"), ("device=GPU-1aaa", ["1"], "1"), ('"device=1,0"', ["1", "0"], "1,0")],
)
def test_builtin_selects_the_requested_gpus(tmp_path: Path, req: str, gpus: list[str], visible: str) -> None:
    inj = plan(req, gpu_tree(tmp_path))
    assert inj.gpus == gpus  # type: ignore[attr-defined]
    nodes = [d.path for d in inj.devices if d.path[11:].isdigit()]  # type: ignore[attr-defined]
    assert nodes == [f"/dev/nvidia{g}" for g in gpus]
    assert f"NVIDIA_VISIBLE_DEVICES={visible}" in inj.env  # type: ignore[attr-defined]


def test_asking_for_more_or_unknown_gpus_is_one_sentence(tmp_path: Path) -> None:
    root = gpu_tree(tmp_path, 1)
    with pytest.raises(GpuError, match="asked for 3 GPUs but this host has 1"):
        plan("3", root)
    with pytest.raises(GpuError, match="device=7: no such GPU"):
        plan("device=7", root)


def test_no_gpu_is_exit_125_with_a_sentence(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    with pytest.raises(GpuError) as info:
        plan("all", tmp_path)
    assert info.value.exit_code == 125
    assert "this host has no NVIDIA GPU" in info.value.message and "/dev/nvidia0" in info.value.message


def test_nvidia_toolkit_hook_is_preferred_over_builtin(tmp_path: Path) -> None:
    root = gpu_tree(tmp_path)
    (root / "usr/bin/nvidia-container-runtime-hook").write_text("#!fake")
    inj = plan('"device=0,1"', root)
    assert inj.method == "nvidia-hook" and not inj.devices  # type: ignore[attr-defined]
    hook = inj.hooks["prestart"][0]  # type: ignore[attr-defined]
    assert hook.path.endswith("nvidia-container-runtime-hook") and hook.args[1] == "prestart"
    assert "NVIDIA_VISIBLE_DEVICES=0,1" in inj.env  # type: ignore[attr-defined]


def test_cdi_specs_are_preferred_over_everything(tmp_path: Path) -> None:
    root = gpu_tree(tmp_path)
    (root / "usr/bin/nvidia-container-runtime-hook").write_text("#!fake")
    cdi = root / "var/run/cdi"
    cdi.mkdir(parents=True)
    spec = {
        "cdiVersion": "0.5.0",
        "kind": "nvidia.com/gpu",
        "devices": [
            {"name": str(i), "containerEdits": {"deviceNodes": [{"path": f"/dev/nvidia{i}"}]}} for i in range(2)
        ] + [{"name": "all", "containerEdits": {"deviceNodes": [{"path": "/dev/nvidia0"}, {"path": "/dev/nvidia1"}]}}],
        "containerEdits": {
            "env": ["NVIDIA_VISIBLE_DEVICES=void"],
            "deviceNodes": [{"path": "/dev/nvidiactl"}],
            "mounts": [{"hostPath": "/usr/bin/nvidia-smi", "containerPath": "/usr/bin/nvidia-smi",
                        "options": ["ro", "nosuid", "nodev", "bind"]}],
            "hooks": [{"hookName": "createContainer", "path": "/usr/bin/nvidia-cdi-hook",
                       "args": ["nvidia-cdi-hook", "update-ldcache"]}],
        },
    }  # fmt: skip
    (cdi / "nvidia.json").write_text(json.dumps(spec))
    inj = plan("device=1", root)
    assert inj.method == "cdi" and inj.gpus == ["nvidia.com/gpu=1"]  # type: ignore[attr-defined]
    assert [d.path for d in inj.devices] == ["/dev/nvidiactl", "/dev/nvidia1"]  # type: ignore[attr-defined]
    assert inj.devices[1].minor == 1  # type: ignore[attr-defined]
    assert inj.hooks["createContainer"][0].args == ("nvidia-cdi-hook", "update-ldcache")  # type: ignore[attr-defined]
    assert plan("all", root).gpus == ["nvidia.com/gpu=all"]  # type: ignore[attr-defined]
    assert plan("2", root).gpus == ["nvidia.com/gpu=0", "nvidia.com/gpu=1"]  # type: ignore[attr-defined]
    with pytest.raises(GpuError, match=r"unresolvable CDI devices nvidia\.com/gpu=5"):
        plan("device=5", root)


def test_driver_libraries_only_take_64_bit_driver_entries(tmp_path: Path) -> None:
    libs = driver_libraries(LDCONFIG, str(tmp_path))
    assert libs == [
        "/usr/lib/x86_64-linux-gnu/libcuda.so",
        "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
        "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
        "/usr/lib/x86_64-linux-gnu/libnvidia-ptxjitcompiler.so.1",
    ]
