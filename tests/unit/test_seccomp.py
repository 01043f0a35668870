"""The seccomp profile: containers-common's format → the spec's linux.seccomp, docker's CAP_SYS_ADMIN rules on
top of the default, and the loader's choices (unconfined, --privileged, a file, a missing default)."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest

from socirun.runtime.options import CAPABILITIES
from socirun.runtime.seccomp import (
    CLONE_NAMESPACE_FLAGS,
    DEFAULT_PROFILE_PATH,
    SeccompProfileError,
    apparmor_enabled,
    kernel_version,
    load_profile,
    native_arch,
    to_oci_seccomp,
    with_docker_namespace_rules,
)
from socirun.runtime.spec import DEFAULT_CAPS

# The shape of Debian's /usr/share/containers/seccomp.json (containers-common 0.50), cut down.
PROFILE: dict[str, Any] = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": 38,
    "defaultErrno": "ENOSYS",
    "archMap": [
        {"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]},
        {"architecture": "SCMP_ARCH_AARCH64", "subArchitectures": ["SCMP_ARCH_ARM"]},
    ],
    "syscalls": [
        {"names": ["kexec_load", "userfaultfd"], "action": "SCMP_ACT_ERRNO", "args": [], "comment": "",
         "includes": {}, "excludes": {}, "errnoRet": 1, "errno": "EPERM"},
        {"names": ["read", "write", "clone", "clone3", "unshare", "mount", "setns"], "action": "SCMP_ACT_ALLOW",
         "args": [], "comment": "", "includes": {}, "excludes": {}},
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW",
         "args": [{"index": 0, "value": 8, "valueTwo": 0, "op": "SCMP_CMP_EQ"}], "includes": {}, "excludes": {}},
        {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64", "x32"]}},
        {"names": ["open_by_handle_at"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_DAC_READ_SEARCH"]}},
        {"names": ["open_by_handle_at"], "action": "SCMP_ACT_ERRNO", "excludes": {"caps": ["CAP_DAC_READ_SEARCH"]},
         "errno": "EPERM"},
        {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "includes": {"minKernel": "4.8"}},
    ],
}  # fmt: skip


def rules_for(seccomp: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [r for r in seccomp["syscalls"] if name in r["names"]]


def default_for(caps: tuple[str, ...] | list[str], arch: str = "amd64") -> dict[str, Any]:
    out = to_oci_seccomp(with_docker_namespace_rules(PROFILE), caps, arch, (6, 1))
    assert out is not None
    return out


def test_default_blocks_new_namespaces_without_cap_sys_admin() -> None:
    """What `unshare -Ur` needs: docker blocks it, the Debian file alone does not."""
    seccomp = default_for(DEFAULT_CAPS)
    for name in ("unshare", "mount", "setns", "umount2", "fsopen"):  # EPERM, as docker answers
        assert [(r["action"], r.get("errnoRet")) for r in rules_for(seccomp, name)] == [("SCMP_ACT_ERRNO", 1)], name
    # clone only when none of the namespace flags is set; clone3 answers ENOSYS so libc falls back to clone
    assert rules_for(seccomp, "clone") == [{"names": ["clone"], "action": "SCMP_ACT_ALLOW", "args": [
        {"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0, "op": "SCMP_CMP_MASKED_EQ"}]}]  # fmt: skip
    assert CLONE_NAMESPACE_FLAGS & 0x10000000  # CLONE_NEWUSER
    assert rules_for(seccomp, "clone3") == [{"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}]
    # the rest of the unconditional group survives
    assert set(rules_for(seccomp, "read")[0]["names"]) == {"read", "write"}
    assert rules_for(seccomp, "kexec_load") == [
        {"names": ["kexec_load", "userfaultfd"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]
    assert seccomp["defaultAction"] == "SCMP_ACT_ERRNO" and seccomp["defaultErrnoRet"] == 38


def test_cap_sys_admin_gets_the_namespace_syscalls_back() -> None:
    seccomp = default_for([*DEFAULT_CAPS, "CAP_SYS_ADMIN"])
    for name in ("unshare", "mount", "setns", "clone", "clone3"):
        assert [r["action"] for r in rules_for(seccomp, name)] == ["SCMP_ACT_ALLOW"], name
        assert "args" not in rules_for(seccomp, name)[0], name


def test_capability_conditional_rules_follow_the_bounding_set() -> None:
    without = to_oci_seccomp(PROFILE, DEFAULT_CAPS, "amd64", (6, 1))
    with_cap = to_oci_seccomp(PROFILE, [*DEFAULT_CAPS, "CAP_DAC_READ_SEARCH"], "amd64", (6, 1))
    assert without is not None and with_cap is not None
    assert rules_for(without, "open_by_handle_at") == [
        {"names": ["open_by_handle_at"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}]  # errno name → number
    assert rules_for(with_cap, "open_by_handle_at") == [{"names": ["open_by_handle_at"], "action": "SCMP_ACT_ALLOW"}]


def test_architectures_and_arch_conditional_rules() -> None:
    amd64 = default_for(DEFAULT_CAPS, "amd64")
    arm64 = default_for(DEFAULT_CAPS, "arm64")
    assert amd64["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    assert arm64["architectures"] == ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert rules_for(amd64, "arch_prctl") and not rules_for(arm64, "arch_prctl")
    assert "architectures" not in default_for(DEFAULT_CAPS, "sparc")  # unknown: libseccomp's native only
    assert rules_for(amd64, "personality")[0]["args"] == [{"index": 0, "value": 8, "valueTwo": 0,
                                                           "op": "SCMP_CMP_EQ"}]  # fmt: skip


def test_min_kernel() -> None:
    old = to_oci_seccomp(PROFILE, DEFAULT_CAPS, "amd64", (4, 4))
    new = to_oci_seccomp(PROFILE, DEFAULT_CAPS, "amd64", (4, 8))
    assert old is not None and new is not None
    assert not rules_for(old, "ptrace") and rules_for(new, "ptrace")
    assert kernel_version("6.1.0-18-amd64") == (6, 1) and kernel_version("weird") == (0, 0)
    assert native_arch("x86_64") == "amd64" and native_arch("aarch64") == "arm64"


@pytest.mark.parametrize(("change", "message"), [
    (lambda p: p.update(architectures=["SCMP_ARCH_X86_64"]), "'architectures' and 'archMap' were both specified"),
    (lambda p: p["syscalls"][1].update(name="read"), "has both 'name' and 'names'"),
    (lambda p: p["syscalls"][2]["args"][0].update(value="8"), "non-numeric index or value"),
    (lambda p: p["syscalls"][0].update(errnoRet=None, errno="ENOPE"), "unknown errno 'ENOPE'"),
    (lambda p: p["syscalls"][0].update(includes=["caps"]), "syscalls[0].includes must be an object"),
    (lambda p: p.update(defaultAction=""), "defaultAction is missing"),
])  # fmt: skip
def test_malformed_profiles_are_one_sentence(change: Any, message: str) -> None:
    profile = copy.deepcopy(PROFILE)
    change(profile)
    with pytest.raises(SeccompProfileError, match="invalid seccomp profile") as err:
        to_oci_seccomp(profile, DEFAULT_CAPS, "amd64", (6, 1))
    assert message in err.value.message and err.value.exit_code == 125


def test_an_empty_profile_means_no_seccomp() -> None:
    assert to_oci_seccomp({"syscalls": []}, DEFAULT_CAPS, "amd64") is None


def test_loader_unconfined_privileged_file_and_missing_default(tmp_path: Path) -> None:
    missing = str(tmp_path / "none.json")
    assert load_profile("unconfined", privileged=False, default_path=missing) is None
    assert load_profile("", privileged=True, default_path=missing) is None  # docker: --privileged is unconfined
    with pytest.raises(SeccompProfileError) as err:
        load_profile("", privileged=False, default_path=missing)
    assert err.value.message == (
        f"the default seccomp profile {missing} is missing: install the Debian package "
        "golang-github-containers-common (scripts/install-deps.sh does), or run with --security-opt "
        "seccomp=unconfined"
    )
    own = tmp_path / "own.json"
    own.write_text('{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["unshare"], '
                   '"action": "SCMP_ACT_ALLOW"}]}')  # fmt: skip
    loaded = load_profile(str(own), privileged=False, default_path=missing)
    assert loaded is not None and loaded["syscalls"] == [{"names": ["unshare"], "action": "SCMP_ACT_ALLOW"}]
    default = tmp_path / "default.json"
    default.write_text(own.read_text())
    with_rules = load_profile("builtin", privileged=False, default_path=str(default))
    assert with_rules is not None and len(with_rules["syscalls"]) > 1  # the default gets docker's rules


def test_loader_refuses_bad_files_with_docker_sentences(tmp_path: Path) -> None:
    with pytest.raises(SeccompProfileError, match=r"opening seccomp profile \(.*/nope.json\) failed: no such file"):
        load_profile(str(tmp_path / "nope.json"), privileged=False)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SeccompProfileError, match=r"decoding seccomp profile \(.*bad.json\) failed"):
        load_profile(str(bad), privileged=False)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(SeccompProfileError, match="not a regular file"):  # and no hang on open
        load_profile(str(fifo), privileged=False)


def test_apparmor_enabled_reads_the_kernel_parameter(tmp_path: Path) -> None:
    param = tmp_path / "enabled"
    param.write_text("Y\n")
    assert apparmor_enabled(str(param)) is True
    param.write_text("N\n")
    assert apparmor_enabled(str(param)) is False
    assert apparmor_enabled(str(tmp_path / "absent")) is False


@pytest.mark.skipif(not os.path.isfile(DEFAULT_PROFILE_PATH), reason="golang-github-containers-common not installed")
def test_the_debian_profile_converts_and_blocks_unshare() -> None:
    profile = load_profile("", privileged=False)
    assert profile is not None
    seccomp = to_oci_seccomp(profile, DEFAULT_CAPS, "amd64", (6, 1))
    assert seccomp is not None and seccomp["architectures"][0] == "SCMP_ARCH_X86_64"
    allowed = {n for r in seccomp["syscalls"] if r["action"] == "SCMP_ACT_ALLOW" and "args" not in r
               for n in r["names"]}  # fmt: skip
    assert {"read", "execve", "socket"} <= allowed and not {"unshare", "mount", "setns", "clone"} & allowed
    assert any("kexec_load" in r["names"] and r["action"] == "SCMP_ACT_ERRNO" for r in seccomp["syscalls"])
    everything = to_oci_seccomp(profile, CAPABILITIES, "amd64", (6, 1))
    assert everything is not None
    assert any("unshare" in r["names"] and r["action"] == "SCMP_ACT_ALLOW" for r in everything["syscalls"])


def test_doctor_says_what_confines_a_container(tmp_path: Path) -> None:
    from socirun.commands.doctor import render, security_checks
    from socirun.runtime.apparmor import HostAppArmor

    profile = tmp_path / "seccomp.json"
    profile.write_text("{}")
    ok = render(security_checks(str(profile), apparmor=HostAppArmor(True, True, "/usr/sbin/apparmor_parser")))
    assert ok[0].startswith(f"[ok  ] seccomp: default profile {profile}")
    assert ok[1].startswith("[ok  ] AppArmor: enabled; containers run under socirun-default (loaded)")
    missing = render(security_checks(str(tmp_path / "none.json"), apparmor=HostAppArmor(False, None, None)))
    assert missing[0].startswith("[FAIL] seccomp: the default profile") and "fix: apt-get install" in missing[1]
    assert missing[2].startswith("[ok  ] AppArmor: not enabled on this host")
