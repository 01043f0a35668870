#!/usr/bin/env bash
# GPU check for `socirun run --gpus` on a machine with an NVIDIA GPU that cannot install packages.
#
# Run as root from a copy of the repository that carries:
#   .debs/  Debian .deb files: containerd, runc, docker-registry, busybox-static, libseccomp2,
#           containernetworking-plugins  (fetched with `apt-get download` into .debs/)
#   .whl/   wheels of socirun's dependencies for the machine's Python  (pip download --only-binary=:all: ...)
#
#   bash bench/gpu_check.sh
#
# It unpacks the debs under /tmp (never into /), installs the wheels offline under /tmp, starts the sandbox
# (a private containerd + docker-registry), pushes a sample carrying the host's glibc (nvidia-smi needs it),
# then runs `socirun --rm --gpus all <sample> nvidia-smi -L` and `--gpus device=0`, printing everything.
# Exit 0 only when both print a `GPU 0:` line. On a host without a GPU socirun refuses with exit 125 and a
# sentence, and so does this script.
set -uo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${SOCIRUN_GPU_CHECK_DIR:-/tmp/socirun-gpu-check}"
ROOTFS="$WORK/debs"
PYDEPS="$WORK/py"
SANDBOX="$WORK/sandbox"
DATA="$WORK/data"
PYTHON="${PYTHON:-python3}"

say() { printf '== %s\n' "$*" >&2; }
fail() { printf 'gpu_check: FAILED: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || fail "run as root (containerd mounts snapshots and runs runc)"
mkdir -p "$WORK"

say "host"
uname -a
"$PYTHON" --version
ls -l /dev/nvidia* 2>&1 | head -20
command -v nvidia-smi && nvidia-smi -L 2>&1 | head -8
ls /usr/local/nvidia 2>/dev/null && echo "(driver tree /usr/local/nvidia present)"

say "unpacking .debs under $ROOTFS"
if compgen -G "$REPO/.debs/*.deb" >/dev/null; then
    mkdir -p "$ROOTFS"
    for deb in "$REPO"/.debs/*.deb; do
        dpkg -x "$deb" "$ROOTFS" || fail "dpkg -x $deb"
    done
else
    say "no .debs/ carried; using what the host has on PATH"
fi
export PATH="$ROOTFS/usr/bin:$ROOTFS/usr/sbin:$ROOTFS/bin:$ROOTFS/sbin:$PATH:/usr/sbin:/sbin"
[ -d "$ROOTFS/usr/lib/cni" ] && export CNI_PATH="$ROOTFS/usr/lib/cni"
if ! ldconfig -p 2>/dev/null | grep -q 'libseccomp.so.2 '; then
    export LD_LIBRARY_PATH="$ROOTFS/usr/lib/x86_64-linux-gnu:$ROOTFS/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
for b in containerd containerd-shim-runc-v2 ctr runc docker-registry; do
    command -v "$b" >/dev/null || fail "$b is not available (carry its .deb in .debs/)"
done
containerd --version
runc --version | head -1
BUSYBOX="$(command -v busybox || true)"
[ -x "$ROOTFS/bin/busybox" ] && BUSYBOX="$ROOTFS/bin/busybox"
[ -n "$BUSYBOX" ] || fail "busybox is not available (carry busybox-static in .debs/)"

say "installing wheels offline into $PYDEPS"
WHEELS="${SOCIRUN_WHEELS:-$REPO/.whl}"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
    # By requirement, so pip takes the wheels that fit this Python (and nothing from an index).
    "$PYTHON" -m pip install -q --no-index --find-links "$WHEELS" --target "$PYDEPS" --upgrade \
        "grpcio>=1.85.1" "protobuf>=7.35.1,<8" "googleapis-common-protos>=1.60" "aiohttp>=3.9" "psutil>=5.9" \
        "rich>=13" || {
        say "pip could not install them; unpacking the fitting wheels directly (they are zip files)"
        "$PYTHON" - "$WHEELS" "$PYDEPS" <<'PYEOF' || fail "cannot unpack the wheels in $WHEELS"
import glob, sys, zipfile
v = f"cp{sys.version_info.major}{sys.version_info.minor}"
for whl in glob.glob(sys.argv[1] + "/*.whl"):
    py, abi = whl[:-4].split("-")[-3:-1]
    if py.startswith("py3") or v in py.split(".") or abi == "abi3":
        zipfile.ZipFile(whl).extractall(sys.argv[2])
PYEOF
    }
fi
export PYTHONPATH="$REPO:$PYDEPS${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -c "import grpc, google.protobuf, aiohttp, psutil; import socirun.runtime.container" || fail "socirun does not import"

socirun() { "$PYTHON" -m socirun "$@"; }

say "starting the sandbox in $SANDBOX"
cleanup() {
    say "stopping the sandbox"
    socirun sandbox down --dir "$SANDBOX" >&2 || true
}
trap cleanup EXIT
REGISTRY="$("$PYTHON" - "$SANDBOX" <<'EOF'
import sys
from socirun.sandbox.sandbox import Sandbox
info = Sandbox(sys.argv[1]).up()
print(info.registry_host)
EOF
)" || fail "the sandbox did not start (see $SANDBOX/containerd.log)"
say "registry $REGISTRY, containerd $SANDBOX/containerd.sock"

say "pushing a sample with the host's glibc"
SAMPLE="$("$PYTHON" - "$REGISTRY" "$BUSYBOX" <<'EOF'
import sys
from pathlib import Path
import socirun.sandbox.sample as sample
sample.BUSYBOX = Path(sys.argv[2])  # the carried busybox-static when the host has none at /bin/busybox
print(sample.push_sample(sys.argv[1], "socirun/gpu-sample", "latest", [1.0], with_glibc=True))
EOF
)" || fail "push-sample --with-glibc failed"
say "sample $SAMPLE"

export CONTAINERD_ADDRESS="$SANDBOX/containerd.sock" CONTAINERD_NAMESPACE=default SOCIRUN_DATA_ROOT="$DATA"
export XDG_CONFIG_HOME="$WORK/config"
mkdir -p "$XDG_CONFIG_HOME/socirun"
printf '[network]\nbridge = "srgpu0"\nsubnet = "10.213.99.0/24"\n' > "$XDG_CONFIG_HOME/socirun/config.toml"

status=0
for gpus in all device=0; do
    say "socirun --rm --gpus $gpus $SAMPLE nvidia-smi -L"
    out="$WORK/out-$gpus.txt"
    socirun --rm --gpus "$gpus" "$SAMPLE" nvidia-smi -L >"$out" 2>"$WORK/err-$gpus.txt"
    rc=$?
    if [ "$rc" != 0 ] && grep -qiE 'CNI|network|iptables|netns|`ip ' "$WORK/err-$gpus.txt"; then
        cat "$WORK/err-$gpus.txt" >&2
        say "bridge networking failed on this host (no iptables or iproute2?); again with --network host" \
            "(the GPU path is the same)"
        socirun --rm --network host --gpus "$gpus" "$SAMPLE" nvidia-smi -L >"$out" 2>"$WORK/err-$gpus.txt"
        rc=$?
    fi
    cat "$out"
    cat "$WORK/err-$gpus.txt" >&2
    echo "exit code: $rc"
    if [ "$rc" = 0 ] && grep -q '^GPU 0:' "$out"; then
        say "--gpus $gpus: OK"
    else
        say "--gpus $gpus: no 'GPU 0:' line"
        status=1
    fi
done
say "what socirun injected (last run's state is gone with --rm; the method shows in a dry plan):"
"$PYTHON" - <<'EOF' || true
from socirun.commands.run_flags import parse_gpus
from socirun.runtime.gpus import plan_gpus
try:
    inj = plan_gpus(parse_gpus("all"))
    print("method:", inj.method, "gpus:", inj.gpus)
    print("devices:", [d.path for d in inj.devices])
    print("mounts:", [m.source for m in inj.mounts])
    print("env:", inj.env)
except Exception as err:  # the sentence socirun would print
    print("no GPU injection:", err)
EOF
[ "$status" = 0 ] && say "GPU check passed" || say "GPU check FAILED"
exit "$status"
