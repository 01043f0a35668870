"""Property tests (hypothesis) of the docker-run argv parser: whatever argv a user (or a script) hands socirun,
`parse_run_args` returns options or raises UsageError (one sentence, exit 125), never anything else. The argv
mixes the flag table's own flags (long, short, `--flag=value`, bundles) with values that are plausible, hostile
(control characters, non-ASCII digits, huge numbers, NaN) or random. Derandomized: the same examples every run."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from socirun.commands.run_flags import FLAGS, NAME_RE, VOLUME_NAME_RE, Flag, parse_run_args
from socirun.errors import UsageError
from socirun.runtime.options import RunOptions

FUZZ = settings(max_examples=2500, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

# Text with what hurts parsers: controls, newlines, NUL, ESC, bidi controls, surrogates, non-ASCII digits.
NASTY = st.text(st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF), max_size=12)
TRICKY_VALUES: list[str] = [
    "", " ", "0", "-1", "1", "+1", "01", "1e308", "nan", "inf", "-inf", "0x10", "1.5", "9" * 400, "9" * 5000,
    "1" + "0" * 30, "count=" + "9" * 5000, "nofile=" + "9" * 30, "\u00b2", "\u0663", "\x1b[2J", "a\x00b", "\ud800",
    "１２", "1g", "1GiB", "512m", "1.5k", "-1m", "all", "none", "host", "bridge", "container:", "container:x",
    "default", "always", "missing", "never", "no", "on-failure:3", "SIGKILL", "9", "65", "TERM", "a=b", "=b", "a=",
    "a:b", ":", "::", "a:b:c:d", "/x", "/x:/y", "/x:/y:ro", "vol:/y", "vol\n:/y", "./x:/y", "/dev", "/proc/x",
    "80", "80:80", "127.0.0.1:8080:80", "[::1]:80:80/udp", "1-2:3-4", "99999:1", "type=bind,source=/a,target=/b",
    "type=volume,target=/v", "type=tmpfs,target=/t,tmpfs-size=1m,tmpfs-mode=1777", "source=a", "nofile=1024:2048",
    "nofile=-1", "core=x", "count=2", "device=0,1", '"device=0,1"', "driver=nvidia", "capabilities=gpu",
    "seccomp=unconfined", "apparmor=x", "label=disable", "no-new-privileges", "CAP_SYS_ADMIN", "ALL", "sys_admin",
    "/dev/null", "/dev/null:/dev/x:rwm", "vendor.com/gpu=all", "web", "web\n", "app:1000", "0:0", "user:grp",
    "4294967296", "net.ipv4.ip_forward=1", "kernel.x=1", "key=value,k2", "linux/amd64", "linux/arm64/v8", "rw",
    "ro", "z", "json", "tty", "plain", "quiet", "standard", "parallel", "soci", "overlayfs", "ctrl-p,ctrl-q", "1.5",
    '"', 'a"b,c', '"a,b',
]  # fmt: skip
TRICKY = st.sampled_from(TRICKY_VALUES)
VALUES = TRICKY | NASTY
LONG = st.sampled_from([f"--{f.name}" for f in FLAGS] + [f"--{a}" for f in FLAGS for a in f.aliases])
SHORT = st.sampled_from([f"-{f.short}" for f in FLAGS if f.short])
TOKENS = (
    LONG
    | SHORT
    | st.builds(lambda flag, value: f"{flag}={value}", LONG, VALUES)
    | st.builds(lambda a, b: a + b[1:], SHORT, SHORT)  # a bundle: -it, -dv
    | st.builds(lambda flag, value: flag + value, SHORT, VALUES)  # -eA=1, -p80
    | VALUES
    | st.sampled_from(["--", "-", "--help", "--=x", "---x", "-=", "--unknown"])
)
# Mostly flag/value pairs, so that deep into argv the parser still sees flags; an image and a command may follow.
ARGV = st.lists(st.tuples(LONG | SHORT, VALUES).map(list) | TOKENS.map(lambda t: [t]), max_size=8).map(
    lambda groups: [token for group in groups for token in group]
)
ENVIRON = st.dictionaries(st.sampled_from(["A", "B", "PATH", "HOME", "X\n"]), NASTY, max_size=3)


def _reader(text: str) -> object:
    def read(path: str) -> str:
        if "missing" in path:
            raise FileNotFoundError(2, "No such file or directory")
        return text

    return read


@FUZZ
@given(argv=ARGV, tail=st.lists(VALUES, max_size=3), environ=ENVIRON,
       env_file=st.text(max_size=40) | st.sampled_from(["A=1\nB\n#c\n", "=x\n", "A B=1\n", "\x00=1\n"]))
def test_parse_run_args_returns_options_or_refuses_with_a_usage_error(argv: list[str], tail: list[str],
                                                                      environ: dict[str, str],
                                                                      env_file: str) -> None:  # fmt: skip
    try:
        opts = parse_run_args([*argv, *tail], environ=environ, read_file=_reader(env_file))  # type: ignore[arg-type]
    except UsageError as err:
        assert err.exit_code == 125
        assert err.message and "Traceback" not in err.message
        return
    assert isinstance(opts, RunOptions)
    # What was accepted fits the whole-string patterns (a `$` match let "web\n" and "vol\n" through).
    assert not opts.name or NAME_RE.fullmatch(opts.name), opts.name
    for volume in opts.volumes:
        assert volume.kind != "volume" or not volume.source or VOLUME_NAME_RE.fullmatch(volume.source), volume


@pytest.mark.parametrize("flag", FLAGS, ids=lambda f: f.name)
def test_every_flag_with_every_tricky_value_returns_options_or_a_usage_error(flag: Flag) -> None:
    # Exhaustive over the table (cheap: a few hundred parses per flag), where the property test samples.
    name = flag.name
    for value in TRICKY_VALUES:
        for argv in ([f"--{name}", value, "img"], [f"--{name}={value}", "img"]):
            try:
                parse_run_args(argv, environ={}, read_file=_reader("A=1\n"))  # type: ignore[arg-type]
            except UsageError as err:
                assert err.exit_code == 125, argv
