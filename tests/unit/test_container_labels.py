"""A container's labels (issue 12, item 18): the image's labels are inherited, except those under the prefixes
socirun / nerdctl and containerd keep for themselves, which an image must not be able to preset."""

from __future__ import annotations

from socirun.oci import Platform
from socirun.runtime.container import container_labels, image_labels_for_container
from socirun.runtime.options import RunOptions
from socirun.runtime.spec import ImageConfig

IMAGE_LABELS = {
    "org.opencontainers.image.title": "demo",
    "maintainer": "someone",
    "nerdctl/anonymous-volumes": '["/etc"]',  # --rm would remove these
    "nerdctl/mounts.7": '{"Type":"bind","Source":"/"}',
    "nerdctl/state-dir": "/root",
    "containerd.io/gc.ref.snapshot.overlayfs": "sha256:" + "9" * 64,  # pins a snapshot against the GC
    "io.containerd.image.config.stop-signal": "SIGKILL",
    "nerdctlx/not-ours": "kept",
}


def test_reserved_prefixes_are_dropped_and_the_rest_kept() -> None:
    assert image_labels_for_container(IMAGE_LABELS) == {
        "org.opencontainers.image.title": "demo",
        "maintainer": "someone",
        "nerdctlx/not-ours": "kept",
    }


def test_container_labels_hold_no_reserved_image_label_but_the_users_labels_win() -> None:
    opts = RunOptions(image="x", labels={"maintainer": "me"})
    labels = container_labels(opts, ImageConfig(labels=IMAGE_LABELS), name="n", namespace="default", hostname="h",
                              state_dir="/run/socirun/n", platform=Platform("linux", "amd64"), mounts=[],
                              anonymous=[])
    assert "nerdctl/anonymous-volumes" not in labels and "nerdctl/mounts.7" not in labels
    assert "containerd.io/gc.ref.snapshot.overlayfs" not in labels
    assert labels["nerdctl/state-dir"] == "/run/socirun/n" and labels["nerdctl/name"] == "n"
    assert labels["io.containerd.image.config.stop-signal"] == "SIGTERM"  # the image's StopSignal field is unset
    assert labels["org.opencontainers.image.title"] == "demo" and labels["maintainer"] == "me"
