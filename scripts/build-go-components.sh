#!/usr/bin/env bash
# Build the real Go components socirun drives, at pinned versions, from published modules
# through the Go module proxy (prebuilt release binaries cannot be downloaded here).
#
#   scripts/build-go-components.sh               # soci-snapshotter-grpc + soci (always)
#   scripts/build-go-components.sh --containerd2 # ... and containerd 2.x, ctr, containerd-shim-runc-v2
#
# Binaries go to $PREFIX/bin/<component>-<version>/ (PREFIX=${SOCIRUN_PREFIX:-/opt/socirun}),
# with stable symlinks $PREFIX/bin/<name>.
# A component whose versioned binaries already report the pinned version is not rebuilt (seconds).
# Run as root (Debian 12). Needs Go >= 1.26 (on PATH or in /usr/local/go/bin).
set -euo pipefail

# --- pins ------------------------------------------------------------------------------------
SOCI_VERSION=v0.16.1
# The two mains live in the nested module .../soci-snapshotter/cmd, which has no tags of its own
# and carries `replace ... => ../`; the proxy serves it only by pseudo-version. This is the commit
# of tag v0.16.1 (same commit time; checked below). Bump both together.
SOCI_CMD_VERSION=v0.0.0-20260930233240-61147fe7c929
CONTAINERD_VERSION=v2.4.2

PREFIX=${SOCIRUN_PREFIX:-/opt/socirun}
BIN=$PREFIX/bin
# A persistent module cache and build cache make a rebuild after a version bump much cheaper.
export GOPATH=$PREFIX/go
export GOMODCACHE=$GOPATH/pkg/mod
export GOCACHE=$GOPATH/cache
export PATH=$PATH:/usr/local/go/bin

log() { printf '%s\n' "$*" >&2; }

# Install the Debian packages that are missing (apt-get update only when something is missing).
ensure_debs() {
    local missing=() p
    for p in "$@"; do
        [ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" = "install ok installed" ] || missing+=("$p")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# reports_version DIR VERSION BIN... : every DIR/BIN exists and its --version mentions VERSION.
reports_version() {
    local dir=$1 want=$2 b out; shift 2
    for b in "$@"; do
        [ -x "$dir/$b" ] || return 1
        # Captured first: `cmd | grep -q` can fail under pipefail when grep exits before cmd (SIGPIPE).
        out=$("$dir/$b" --version 2>/dev/null) || return 1
        grep -qwF -- "$want" <<<"$out" || return 1
    done
}

# link_bins DIR BIN... : stable symlinks $BIN/BIN -> DIR/BIN (relative, so $PREFIX can move).
link_bins() {
    local dir=$1 b; shift
    for b in "$@"; do ln -sfn "$(basename "$dir")/$b" "$BIN/$b"; done
}

# Work dirs created by mktemp, removed on exit whatever happens.
TMPDIRS=()
cleanup() { local d; for d in "${TMPDIRS[@]}"; do rm -rf -- "$d"; done; }
trap cleanup EXIT
# newtmp VAR TEMPLATE (not via $(...): the list must be updated in this shell)
newtmp() { local d; d=$(mktemp -d "$2"); TMPDIRS+=("$d"); printf -v "$1" '%s' "$d"; }

# finish NAME VERSION STAGE START BIN... : move the staged dir into place and link it.
finish() {
    local name=$1 ver=$2 stage=$3 start=$4; shift 4
    local dest=$BIN/$name-$ver
    reports_version "$stage" "$ver" "$@" || { log "error: built $name does not report $ver"; exit 1; }
    chmod 755 "$stage"   # mktemp -d made it 0700; the binaries are for every user
    rm -rf -- "$dest"
    mv -- "$stage" "$dest"
    link_bins "$dest" "$@"
    log "built $name $ver in $(( $(date +%s) - start ))s -> $dest"
}

build_soci() {
    local dir=$BIN/soci-snapshotter-$SOCI_VERSION bins=(soci-snapshotter-grpc soci)
    if reports_version "$dir" "$SOCI_VERSION" "${bins[@]}"; then
        link_bins "$dir" "${bins[@]}"
        log "soci-snapshotter $SOCI_VERSION already built ($dir)"
        return
    fi
    # cgo: ztoc/compression links zlib statically (-l:libz.a). fuse3 is for run time: it provides
    # `fusermount`; with it SOCI mounts FUSE layers with `suid`, without it mounts directly nosuid,nodev.
    ensure_debs gcc libc6-dev zlib1g-dev fuse3
    local start; start=$(date +%s)
    log "building soci-snapshotter $SOCI_VERSION (a few minutes)..."
    local work stage
    newtmp work /tmp/socirun-soci-build.XXXXXX
    newtmp stage "$BIN/.soci-snapshotter-$SOCI_VERSION.XXXXXX"
    # Throwaway module: require the tagged library and the cmd module at the same commit, and
    # redirect cmd's `v0.0.0-local => ../` to the tag (replaces of dependencies are ignored, so the
    # ones that matter are repeated here). No `go mod tidy`: it would also resolve tag-only deps.
    cat >"$work/go.mod" <<EOF
module socirun.local/build/soci-snapshotter

go 1.26.0

require (
	github.com/awslabs/soci-snapshotter $SOCI_VERSION
	github.com/awslabs/soci-snapshotter/cmd $SOCI_CMD_VERSION
)

replace (
	github.com/awslabs/soci-snapshotter v0.0.0 => github.com/awslabs/soci-snapshotter $SOCI_VERSION
	github.com/awslabs/soci-snapshotter v0.0.0-local => github.com/awslabs/soci-snapshotter $SOCI_VERSION
	github.com/hashicorp/golang-lru => github.com/ktock/golang-lru v0.5.5-0.20211029085301-ec551be6f75c
	cyphar.com/go-pathrs => github.com/cyphar/libpathrs/go-pathrs v0.2.1
)
EOF
    local pkg=github.com/awslabs/soci-snapshotter
    (cd "$work" && go get "$pkg/cmd/soci-snapshotter-grpc@$SOCI_CMD_VERSION" "$pkg/cmd/soci@$SOCI_CMD_VERSION")
    # Guard against bumping one pin without the other: the pseudo-version carries the commit time.
    local tag_time cmd_time
    tag_time=$(cd "$work" && go list -m -f '{{.Time.UTC.Format "20060102150405"}}' "$pkg@$SOCI_VERSION")
    cmd_time=$(cut -d- -f2 <<<"$SOCI_CMD_VERSION")
    if [ "$tag_time" != "$cmd_time" ]; then
        log "error: SOCI_CMD_VERSION $SOCI_CMD_VERSION is not the commit of $SOCI_VERSION ($tag_time)"
        exit 1
    fi
    # The proxy gives no commit hash (no Origin), so the revision is the pseudo-version's short hash.
    local rev=${SOCI_CMD_VERSION##*-}
    (
        cd "$work"
        CGO_ENABLED=1 go build -trimpath -o "$stage/" \
            -ldflags "-s -w -X $pkg/version.Version=$SOCI_VERSION -X $pkg/version.Revision=$rev" \
            "$pkg/cmd/soci-snapshotter-grpc" "$pkg/cmd/soci"
    )
    finish soci-snapshotter "$SOCI_VERSION" "$stage" "$start" "${bins[@]}"
}

build_containerd2() {
    local dir=$BIN/containerd-$CONTAINERD_VERSION bins=(containerd ctr containerd-shim-runc-v2)
    if reports_version "$dir" "$CONTAINERD_VERSION" "${bins[@]}"; then
        link_bins "$dir" "${bins[@]}"
        log "containerd $CONTAINERD_VERSION already built ($dir)"
        return
    fi
    ensure_debs gcc libc6-dev
    local start; start=$(date +%s)
    log "building containerd $CONTAINERD_VERSION (a few minutes)..."
    local work stage mod=github.com/containerd/containerd/v2
    newtmp work /tmp/socirun-containerd-build.XXXXXX
    newtmp stage "$BIN/.containerd-$CONTAINERD_VERSION.XXXXXX"
    local ld="-s -w -X $mod/version.Version=$CONTAINERD_VERSION"
    (
        # No replace directives upstream, so plain `go install pkg@version` works (outside any module).
        cd "$work"
        GOBIN=$stage go install -trimpath -tags "no_btrfs urfave_cli_no_docs" -ldflags "$ld" \
            "$mod/cmd/containerd@$CONTAINERD_VERSION" "$mod/cmd/ctr@$CONTAINERD_VERSION"
        # The shim is built static and without gRPC, as upstream does.
        GOBIN=$stage CGO_ENABLED=0 go install -trimpath -tags "no_grpc urfave_cli_no_docs" -ldflags "$ld" \
            "$mod/cmd/containerd-shim-runc-v2@$CONTAINERD_VERSION"
    )
    finish containerd "$CONTAINERD_VERSION" "$stage" "$start" "${bins[@]}"
}

main() {
    local with_containerd2=0 a
    for a in "$@"; do
        case $a in
            --containerd2) with_containerd2=1 ;;
            -h|--help) sed -n '2,11p' "$0"; return 0 ;;
            *) log "unknown argument: $a (try --help)"; return 2 ;;
        esac
    done
    [ "$(id -u)" -eq 0 ] || { log "run as root"; return 1; }
    command -v go >/dev/null || { log "go not found (expected /usr/local/go/bin/go)"; return 1; }
    mkdir -p "$BIN" "$GOPATH"
    build_soci
    [ "$with_containerd2" -eq 0 ] || build_containerd2
}

main "$@"
