#!/usr/bin/env bash
# Installs what socirun's demo and tests need on a Debian/Ubuntu host (run as root):
# the Debian packages of the real components, the real soci-snapshotter and containerd 2.x built with Go into
# /opt/socirun/bin
# (scripts/build-go-components.sh: minutes the first time, seconds after), then socirun itself into ./.venv.
#   scripts/install-deps.sh          runtime only
#   scripts/install-deps.sh --test   with the test tools (pytest, ruff, mypy, ...)
set -euo pipefail
cd "$(dirname "$0")/.."

# golang-github-containers-common: /usr/share/containers/seccomp.json, the default seccomp profile of every run.
packages=(containerd runc docker-registry containernetworking-plugins busybox-static iptables tmux tini iproute2
          golang-github-containers-common)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ! python3 -m venv --help >/dev/null 2>&1; then
    missing+=(python3-venv)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# containerd 2.x too: SOCI v0.16 needs a containerd that passes the namespace to proxy snapshotters, which
# Debian's 1.6 does not; the SOCI sandbox runs on it (socirun/sandbox/components.py).
bash scripts/build-go-components.sh --containerd2

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
extra=""
if [ "${1:-}" = "--test" ]; then
    extra="[test]"
fi
# Quiet unless it fails: setuptools' build of the editable install talks a lot (warnings included) even with -q,
# so pip's output is kept in a file and shown only when pip exits non-zero.
quiet_pip() {
    local log
    log="$(mktemp)"
    if ! .venv/bin/python -m pip "$@" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "install-deps: pip $* failed (its output is above)" >&2
        return 1
    fi
    rm -f "$log"
}
quiet_pip install -q --disable-pip-version-check --upgrade pip
quiet_pip install -q --disable-pip-version-check -e ".${extra}"
