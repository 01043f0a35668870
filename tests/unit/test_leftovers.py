"""Issue 12, second wave: whole-string patterns (no trailing newline passes), the terminal sanitiser on the run
engine's and the quiet face's own lines, non-ASCII digits in a user, the SOCI probe's parsers of registry JSON,
and the --rm teardown that never removes anything under a task that still exists."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from socirun import events as ev
from socirun.commands.run_flags import parse_run_args
from socirun.containerd.runtime import TaskInfo
from socirun.errors import ContainerdError, MalformedImageError, SocirunError, UsageError
from socirun.reference import ImageReference, parse_reference
from socirun.runtime import container, reaper
from socirun.runtime.image_users import resolve_user
from socirun.runtime.lifecycle import ContainerState, teardown
from socirun.soci import constants as c
from socirun.soci.probe import discover_indexes, v1_referrer, v2_index_digest
from socirun.ui.jsonl import QuietRenderer

ESC = "\x1b[2J"
D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
DEEP = b"[" * 200_000 + b"]" * 200_000


# ---------------------------------------------------------------------------------------------- whole strings


@pytest.mark.parametrize("argv", [
    ["--name", "web\n", "img"],
    ["-v", "vol\n:/x", "img"],
    ["--mount", "type=volume,source=vol\n,target=/x", "img"],
    ["--device", "vendor.com/gpu=all\n", "img"],
])  # fmt: skip
def test_a_trailing_newline_is_refused_in_names_volumes_and_cdi_devices(argv: list[str]) -> None:
    with pytest.raises(UsageError) as caught:
        parse_run_args(argv)
    assert caught.value.exit_code == 125


def test_a_relative_v_source_that_is_no_volume_name_is_refused_as_docker_does() -> None:
    with pytest.raises(UsageError, match='"dir/sub" includes invalid characters for a local volume name'):
        parse_run_args(["-v", "dir/sub:/x", "img"])
    # A named volume and a ./ path are still what they were.
    volumes = parse_run_args(["-v", "vol:/x", "-v", "./here:/y", "img"]).volumes
    assert [(v.kind, v.source) for v in volumes] == [("volume", "vol"), ("bind", "./here")]


@pytest.mark.parametrize("text", ["alpine:latest\n", "alpine\n", "localhost:5000\n/a:1", "a" * 64 + "\n"])
def test_a_reference_with_a_trailing_newline_is_refused(text: str) -> None:
    with pytest.raises(UsageError, match="invalid reference format"):
        parse_reference(text)


def test_a_tag_with_a_trailing_newline_is_refused() -> None:
    ref = parse_reference("alpine:3")
    with pytest.raises(UsageError, match="is not a valid tag"):
        ref.with_tag("latest\n")
    assert ref.with_tag("latest").tag == "latest"


# ---------------------------------------------------------------------------------------------- terminal


def _ctx(reference: ImageReference) -> Any:
    def no_pull() -> Any:
        raise RuntimeError("stop after the message")

    return SimpleNamespace(reference=reference, platform=None, snapshotter=None, pull=no_pull)


def test_the_unable_to_find_image_line_is_made_terminal_safe(capsys: pytest.CaptureFixture[str]) -> None:
    class NoImages:
        async def image_get(self, name: str) -> None:
            return None

    opts: Any = SimpleNamespace(pull="missing", quiet=False)
    ref = ImageReference(domain="registry.example", path=f"a{ESC}b", tag="1")
    with pytest.raises(RuntimeError, match="stop after the message"):
        asyncio.run(container.ensure_image(NoImages(), opts, _ctx(ref), lambda e: None))  # type: ignore[arg-type]
    err = capsys.readouterr().err
    assert "\x1b" not in err
    assert "Unable to find image 'registry.example/a\\x1b[2Jb:1' locally" in err


def test_cleanup_errors_are_made_terminal_safe(capsys: pytest.CaptureFixture[str]) -> None:
    container.report_cleanup_errors([f"cni said {ESC}", "second"])
    assert capsys.readouterr().err == "socirun: cleanup: cni said \\x1b[2J\nsocirun: cleanup: second\n"


def test_the_quiet_face_makes_its_lines_terminal_safe(monkeypatch: pytest.MonkeyPatch) -> None:
    import socirun.ui.jsonl as jsonl

    # Its helpers sanitise today; the face must not depend on it.
    monkeypatch.setattr(jsonl, "alias_line", lambda e: f"alias {e.expanded_from}")
    monkeypatch.setattr(jsonl, "summary_line", lambda m, e: f"pulled {e.reference}")
    out = io.StringIO()
    face = QuietRenderer(out)
    face.handle(ev.Resolving(reference="r/a:1", expanded_from=f"x{ESC}"))
    face.handle(ev.PullFinished(reference=f"r/a{ESC}:1", manifest_digest=D1, snapshotter="overlayfs",
                                mode="standard", fetched=1, total_size=1, elapsed=1.0))  # fmt: skip
    assert out.getvalue() == "alias x\\x1b[2J\npulled r/a\\x1b[2J:1\n"


# ---------------------------------------------------------------------------------------------- users


PASSWD = "root:x:0:0::/root:/bin/sh\n\u00b2:x:5:6::/:/bin/sh\n"


def test_a_user_in_non_ascii_digits_is_a_name_not_a_number() -> None:
    # containerd's WithUser: Atoi fails, so "²" is looked up in passwd.
    user = resolve_user("\u00b2", PASSWD, "")
    assert (user.uid, user.gid, user.name) == (5, 6, "\u00b2")
    with pytest.raises(SocirunError, match="unable to find user \u00b9\u00b2"):
        resolve_user("\u00b9\u00b2", PASSWD, "")
    with pytest.raises(SocirunError, match="a uid is a number"):
        resolve_user("99999999999", PASSWD, "")


# ---------------------------------------------------------------------------------------------- SOCI probe


def _referrers(*entries: object) -> bytes:
    return json.dumps({"manifests": list(entries)}).encode()


@pytest.mark.parametrize("body", [
    b"[]",
    b'"text"',
    b"not json",
    b"\xff\xfe",
    DEEP,
    json.dumps({"manifests": 5}).encode(),
    json.dumps({"manifests": {"a": 1}}).encode(),
    _referrers(5),
    _referrers({"artifactType": c.INDEX_V1, "size": 1}),
    _referrers({"artifactType": c.INDEX_V1, "digest": 5, "size": 1}),
    _referrers({"artifactType": c.INDEX_V1, "digest": {"x": 1}, "size": 1}),
    _referrers({"artifactType": c.INDEX_V1, "digest": "sha256:short", "size": 1}),
    _referrers({"artifactType": 7, "digest": D1, "size": 1}),
])  # fmt: skip
def test_a_malformed_referrers_answer_is_one_malformed_image_error(body: bytes) -> None:
    with pytest.raises(MalformedImageError):
        v1_referrer(body)


@pytest.mark.parametrize(("body", "found"), [
    (b"{}", None),
    (json.dumps({"manifests": None}).encode(), None),
    (_referrers(), None),
    (_referrers({"artifactType": "other", "digest": D2, "size": 1}), None),
    (_referrers({"artifactType": "other", "digest": D2, "size": 1},
                {"artifactType": c.INDEX_V1, "digest": D1, "size": 1}), D1),
])  # fmt: skip
def test_a_well_formed_referrers_answer_names_the_first_v1_index_or_none(body: bytes, found: str | None) -> None:
    assert v1_referrer(body) == found


@pytest.mark.parametrize(("manifest", "outcome"), [
    (b"[]", None),
    (DEEP, None),
    (b"{}", None),
    (json.dumps({"annotations": 5}).encode(), None),
    (json.dumps({"annotations": {c.ANN_INDEX_DIGEST: D1}}).encode(), D1),
    (json.dumps({"annotations": {c.ANN_INDEX_DIGEST: 5}}).encode(), MalformedImageError),
    (json.dumps({"annotations": {c.ANN_INDEX_DIGEST: ["x"]}}).encode(), MalformedImageError),
    (json.dumps({"annotations": {c.ANN_INDEX_DIGEST: "../../x"}}).encode(), MalformedImageError),
])  # fmt: skip
def test_the_v2_index_annotation_is_a_digest_or_absent(manifest: bytes, outcome: object) -> None:
    if outcome is MalformedImageError:
        with pytest.raises(MalformedImageError):
            v2_index_digest(manifest)
    else:
        assert v2_index_digest(manifest) == outcome


class _Registry:
    def __init__(self, manifests: dict[str, bytes], referrers: bytes | None) -> None:
        self.manifests, self.referrers = manifests, referrers

    async def fetch_manifest(self, ref: object, digest: str, accept: str = "") -> tuple[str, bytes]:
        return "application/vnd.oci.image.manifest.v1+json", self.manifests[digest]

    async def fetch_range(self, ref: object, desc: object, start: int, end: int) -> bytes:
        return b"x"

    async def fetch_referrers(self, ref: object, digest: str) -> bytes | None:
        return self.referrers


def _image(annotation: object) -> Any:
    manifest = {"annotations": {c.ANN_INDEX_DIGEST: annotation}} if annotation is not None else {}
    return SimpleNamespace(reference="r/a:1", manifest_bytes=json.dumps(manifest).encode(),
                           manifest=SimpleNamespace(digest="sha256:" + "a" * 64))


@pytest.mark.parametrize("index_body", [
    b"[]",
    DEEP,
    b"\xff",
    json.dumps({"layers": 5}).encode(),
    json.dumps({"layers": [5]}).encode(),
    json.dumps({"layers": [{"mediaType": c.ZTOC_MEDIA_TYPE, "digest": 5, "size": 1}]}).encode(),
    json.dumps({"layers": [{"mediaType": c.ZTOC_MEDIA_TYPE, "digest": D2, "size": -1}]}).encode(),
    json.dumps({"layers": [{"mediaType": c.ZTOC_MEDIA_TYPE, "digest": D2, "size": 1, "annotations": []}]}).encode(),
])  # fmt: skip
def test_a_malformed_soci_index_is_named_but_unfetchable(index_body: bytes) -> None:
    registry: Any = _Registry({D1: index_body}, None)
    v2, _, _, _ = asyncio.run(discover_indexes(registry, _image(D1), None, look_for_v1=False))
    assert v2 is not None and not v2.fetchable and v2.problem.startswith("it is malformed"), v2


@pytest.mark.parametrize("referrers", [DEEP, b"[]", json.dumps({"manifests": 5}).encode(),
                                       _referrers({"artifactType": c.INDEX_V1, "digest": 5, "size": 1})])
def test_malformed_referrers_and_annotations_mean_no_index_and_a_note(referrers: bytes) -> None:
    registry: Any = _Registry({}, referrers)
    v2, v1, explicit, notes = asyncio.run(discover_indexes(registry, _image(5), None))
    assert (v2, v1, explicit) == (None, None, None)
    assert any("annotation" in n for n in notes) and any("referrers API gave no usable answer" in n for n in notes)


# ---------------------------------------------------------------------------------------------- --rm teardown


class _Runtime:
    """A task that still runs: Tasks.Delete refuses it, Tasks.Get still finds it."""

    def __init__(self, task: TaskInfo | None, *, delete_fails: bool) -> None:
        self.task, self.delete_fails = task, delete_fails
        self.calls: list[str] = []
        self.ctd = self

    async def delete_task(self, container_id: str) -> int | None:
        self.calls.append("delete_task")
        if self.delete_fails:
            raise ContainerdError("task must be stopped before deletion: running: failed precondition")
        self.task = None
        return 0

    async def get_task(self, container_id: str) -> TaskInfo | None:
        return self.task

    async def delete_container(self, container_id: str) -> None:
        self.calls.append("delete_container")

    async def snapshot_remove(self, snapshotter: str, key: str) -> None:
        self.calls.append("snapshot_remove")


def _state(tmp_path: Path) -> ContainerState:
    state_dir = tmp_path / "containers" / "default" / ("c" * 64)
    state_dir.mkdir(parents=True)
    return ContainerState(id="c" * 64, name="n1", namespace="default", address="/x", snapshotter="overlayfs",
                          data_root=str(tmp_path), state_dir=str(state_dir), rm=True, network="none")  # fmt: skip


def test_teardown_removes_nothing_while_the_task_still_exists(tmp_path: Path) -> None:
    state = _state(tmp_path)
    rt: Any = _Runtime(TaskInfo(pid=42, status="RUNNING"), delete_fails=True)
    errors = asyncio.run(teardown(rt, state, remove=True))
    assert rt.calls == ["delete_task"]
    assert os.path.isdir(state.state_dir)
    assert errors[-1] == (f"container {'c' * 12} still has a task, so its network, snapshot and state were left in "
                          "place")  # fmt: skip


def test_teardown_removes_everything_once_the_task_is_gone(tmp_path: Path) -> None:
    state = _state(tmp_path)
    rt: Any = _Runtime(TaskInfo(pid=42, status="STOPPED"), delete_fails=False)
    assert asyncio.run(teardown(rt, state, remove=True)) == []
    assert rt.calls == ["delete_task", "delete_container", "snapshot_remove"]
    assert not os.path.exists(state.state_dir)


def test_without_sig_proxy_a_terminating_signal_detaches_instead_of_ending_socirun() -> None:
    async def run() -> int:
        loop = asyncio.get_running_loop()
        detached: asyncio.Future[int] = loop.create_future()
        opts: Any = SimpleNamespace(tty=False, sig_proxy=False)
        installed = container._install_signal_handlers(loop, None, opts, "c", detached)  # type: ignore[arg-type]
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            return await asyncio.wait_for(detached, 5)
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)

    assert asyncio.run(run()) == signal.SIGTERM


def test_the_reaper_handshake_sees_which_fifos_a_process_holds(tmp_path: Path) -> None:
    fifo, other = tmp_path / "out", tmp_path / "err"
    os.mkfifo(fifo)
    os.mkfifo(other)
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        assert reaper.holds(os.getpid(), [str(fifo)])
        assert not reaper.holds(os.getpid(), [str(fifo), str(other)])
    finally:
        os.close(fd)
    assert not reaper.holds(os.getpid(), [str(fifo)])
