"""The labels socirun puts on a container record, in one place: nerdctl's keys
(https://github.com/containerd/nerdctl/blob/main/pkg/labels/labels.go), so `nerdctl ps` shows socirun's containers
and socirun's commands find nerdctl's, and containerd's image stop-signal key. Written by socirun.runtime.container,
read by the container commands, `watch` and the name lookup of socirun.containerd.runtime."""

from __future__ import annotations

NERDCTL_PREFIX = "nerdctl/"
NAMESPACE = "nerdctl/namespace"
NAME = "nerdctl/name"
HOSTNAME = "nerdctl/hostname"
STATE_DIR = "nerdctl/state-dir"
NETWORKS = "nerdctl/networks"
PLATFORM = "nerdctl/platform"
EXTRA_HOSTS = "nerdctl/extraHosts"
IPC = "nerdctl/ipc"
AUTO_REMOVE = "nerdctl/auto-remove"
PRIVILEGED = "nerdctl/privileged"
USER = "nerdctl/user"
STOP_TIMEOUT = "nerdctl/stop-timeout"
ANONYMOUS_VOLUMES = "nerdctl/anonymous-volumes"
MOUNTS_PREFIX = "nerdctl/mounts."  # one label per mount: nerdctl/mounts.0, nerdctl/mounts.1, ...
# containerd's own key for the image's STOPSIGNAL, which `ctr tasks kill` without -s reads.
STOP_SIGNAL = "io.containerd.image.config.stop-signal"

# Label namespaces that belong to socirun / nerdctl and containerd: an image's own labels under them are not
# copied, or an image could name a container's anonymous volumes or mounts (which --rm and `nerdctl rm` act on),
# its state directory, or the garbage collector's references.
RESERVED_PREFIXES = (NERDCTL_PREFIX, "containerd.io/", "io.containerd.")


def name_filter(name: str) -> str:
    """The containerd list filter for the container that carries `name`."""
    return f'labels."{NAME}"=={name}'
