"""The default AppArmor profile: its text, the decision which profile a container gets, and the loader (with a fake
apparmor_parser: this host has no AppArmor, so a real load is not tested here)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from socirun.errors import EXIT_DAEMON
from socirun.runtime.apparmor import (
    DEFAULT_PROFILE,
    AppArmorError,
    HostAppArmor,
    TemplateMacros,
    container_profile,
    describe,
    ensure_default_profile,
    find_parser,
    host_apparmor,
    host_macros,
    is_loaded,
    profile_text,
)
from socirun.runtime.seccomp import apparmor_enabled as apparmor_enabled_from_seccomp

ALL_MACROS = TemplateMacros(abi_3_0=True, tunables_global=True, abstractions_base=True)


def rules(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("# ")]


# ------------------------------------------------------------------------------------------------ profile text


def test_profile_has_dockers_header_and_key_rules() -> None:
    text = profile_text(DEFAULT_PROFILE, ALL_MACROS)
    got = rules(text)
    assert f"profile {DEFAULT_PROFILE} flags=(attach_disconnected,mediate_deleted) {{" in got
    assert text.rstrip().endswith("}")
    for rule in ("deny mount,", "network,", "capability,", "file,", "umount,",
                 "deny @{PROC}/* w,", "deny @{PROC}/sys/[^k]** w,", "deny @{PROC}/sys/kernel/{?,??,[^s][^h][^m]**} w,",
                 "deny @{PROC}/sysrq-trigger rwklx,", "deny @{PROC}/kcore rwklx,",
                 "deny /sys/firmware/** rwklx,", "deny /sys/kernel/security/** rwklx,",
                 "deny /sys/devices/virtual/powercap/** rwklx,", "deny /sys/fs/cg[^r]*/** wklx,",
                 "signal (receive) peer=unconfined,", "signal (receive) peer=runc,",
                 f"signal (send,receive) peer={DEFAULT_PROFILE},",
                 f"ptrace (trace,tracedby,read,readby) peer={DEFAULT_PROFILE},"):  # fmt: skip
        assert rule in got, rule
    # Writes below /proc/<pid>/ and /proc/sys/ stay allowed: the character classes exclude digits 1-9 and "sys".
    assert "deny @{PROC}/{[^1-9/],[^1-9/][^0-9/],[^1-9s/][^0-9y/][^0-9s/],[^1-9/][^0-9/][^0-9/][^0-9/]*}/** w," in got
    # Every rule inside the profile is terminated (the parser rejects a missing comma).
    body = got[got.index(f"profile {DEFAULT_PROFILE} flags=(attach_disconnected,mediate_deleted) {{") + 1:-1]
    assert all(r.endswith(",") or r.startswith("#include") for r in body), body


def test_profile_abi_and_includes_follow_what_the_parser_offers() -> None:
    full = rules(profile_text(DEFAULT_PROFILE, ALL_MACROS))
    assert full[0] == "abi <abi/3.0>," and full[1] == "#include <tunables/global>"
    assert "#include <abstractions/base>" in full and "@{PROC}=/proc/" not in full
    # An old parser (no abi/3.0, no tunables): no abi line, and @{PROC} defined by the profile itself.
    bare = rules(profile_text(DEFAULT_PROFILE, TemplateMacros()))
    assert bare[0] == "@{PROC}=/proc/"
    assert not any(r.startswith(("abi ", "#include")) for r in bare)


def test_host_macros_reads_the_profile_directory(tmp_path: Path) -> None:
    (tmp_path / "abi").mkdir()
    (tmp_path / "abi" / "3.0").write_text("")
    (tmp_path / "tunables").mkdir()
    (tmp_path / "tunables" / "global").write_text("")
    assert host_macros(str(tmp_path)) == TemplateMacros(abi_3_0=True, tunables_global=True, abstractions_base=False)
    assert host_macros(str(tmp_path / "absent")) == TemplateMacros()


# ------------------------------------------------------------------------------------------------ decision


@pytest.mark.parametrize(("requested", "enabled", "privileged", "expected"), [
    ("", False, False, None),  # no AppArmor on the host: no profile (runc would fail to apply one)
    ("mine", False, False, None),
    ("", True, False, DEFAULT_PROFILE),
    ("unconfined", True, False, "unconfined"),
    ("", True, True, "unconfined"),  # docker: privileged containers run unconfined
    ("mine", True, True, "mine"),  # a named profile wins over --privileged
    ("mine", True, False, "mine"),
])  # fmt: skip
def test_container_profile_decision(requested: str, enabled: bool, privileged: bool, expected: str | None) -> None:
    assert container_profile(requested, enabled=enabled, privileged=privileged) == expected


def test_apparmor_enabled_still_importable_from_seccomp(tmp_path: Path) -> None:
    param = tmp_path / "enabled"
    param.write_text("Y\n")
    assert apparmor_enabled_from_seccomp(str(param)) is True


# ------------------------------------------------------------------------------------------------ loader


def fake_parser(tmp_path: Path, rc: int = 0, message: str = "") -> tuple[str, Path]:
    """An apparmor_parser that records its argv and stdin, then exits with rc."""
    record = tmp_path / "record"
    script = tmp_path / "bin" / "apparmor_parser"
    script.parent.mkdir(exist_ok=True)
    script.write_text(
        "#!/usr/bin/env python3\nimport json, sys\n"
        f"open({str(record)!r}, 'w').write(json.dumps({{'argv': sys.argv[1:], 'stdin': sys.stdin.read()}}))\n"
        f"sys.stderr.write({message!r})\nsys.exit({rc})\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script), record


def profiles_file(tmp_path: Path, *names: str) -> str:
    path = tmp_path / "profiles"
    path.write_text("".join(f"{n} (enforce)\n" for n in names))
    return str(path)


def test_loader_feeds_the_profile_to_apparmor_parser_on_stdin(tmp_path: Path) -> None:
    parser, record = fake_parser(tmp_path)
    loaded = ensure_default_profile(parser=parser, profiles_path=profiles_file(tmp_path, "docker-default"),
                                    macros=ALL_MACROS)  # fmt: skip
    assert loaded is True
    seen = json.loads(record.read_text())
    assert seen["argv"] == ["-Kr"]  # no path argument: the source comes from stdin, no shell, no temp file
    assert seen["stdin"] == profile_text(DEFAULT_PROFILE, ALL_MACROS)


def test_loader_does_nothing_when_the_profile_is_loaded(tmp_path: Path) -> None:
    parser, record = fake_parser(tmp_path)
    profiles = profiles_file(tmp_path, "docker-default", f"{DEFAULT_PROFILE}-old", DEFAULT_PROFILE)
    assert ensure_default_profile(parser=parser, profiles_path=profiles) is False
    assert not record.exists()
    # A profile whose name only starts with ours is not ours.
    assert is_loaded(DEFAULT_PROFILE, profiles_file(tmp_path, f"{DEFAULT_PROFILE}-old")) is False


def test_loader_without_parser_fails_with_the_fix(tmp_path: Path) -> None:
    with pytest.raises(AppArmorError) as err:
        ensure_default_profile(parser=None, profiles_path=profiles_file(tmp_path))
    assert err.value.exit_code == EXIT_DAEMON
    assert "apt-get install apparmor" in str(err.value) and "apparmor=unconfined" in str(err.value)


def test_loader_reports_the_parsers_complaint(tmp_path: Path) -> None:
    parser, _ = fake_parser(tmp_path, rc=1, message="AppArmor parser error at line 3: syntax error\n")
    with pytest.raises(AppArmorError) as err:
        ensure_default_profile(parser=parser, profiles_path=profiles_file(tmp_path), macros=TemplateMacros())
    assert err.value.exit_code == EXIT_DAEMON
    assert str(err.value).endswith("-Kr exited with 1: AppArmor parser error at line 3: syntax error")


def test_unreadable_profiles_list_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(AppArmorError, match="could not check whether the socirun-default AppArmor profile"):
        is_loaded(DEFAULT_PROFILE, str(tmp_path / "absent"))


def test_find_parser_looks_in_the_given_directories(tmp_path: Path) -> None:
    parser, _ = fake_parser(tmp_path)
    assert find_parser([str(tmp_path / "none"), str(Path(parser).parent)]) == parser
    assert find_parser([str(tmp_path / "none")]) is None


# ------------------------------------------------------------------------------------------------ doctor


def test_doctor_says_which_profile_is_active(tmp_path: Path) -> None:
    enabled = tmp_path / "enabled"
    enabled.write_text("Y\n")
    parser, _ = fake_parser(tmp_path)
    bin_dir = str(Path(parser).parent)
    host = host_apparmor(str(enabled), profiles_file(tmp_path), [bin_dir])
    assert host == HostAppArmor(True, False, parser)
    ok, detail, fix = describe(host)
    assert ok and f"containers run under {DEFAULT_PROFILE} (loaded by {parser} on the first run)" in detail
    ok, detail, _ = describe(HostAppArmor(True, True, None))
    assert ok and f"under {DEFAULT_PROFILE} (loaded)" in detail
    ok, detail, fix = describe(HostAppArmor(True, False, None))
    assert not ok and "apparmor_parser is missing" in detail and fix == "apt-get install apparmor"
    ok, detail, _ = describe(host_apparmor(str(tmp_path / "absent"), profiles_file(tmp_path), [bin_dir]))
    assert ok and detail.startswith("not enabled on this host")
