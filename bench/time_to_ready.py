"""Benchmark: time from the command until a sample "server" answers, on the real soci-snapshotter, for a >= 1 GB
sample whose start reads a few hundred MB spread over many files before it listens (a model server importing
its libraries and loading weights), three ways:

- lazy:     `socirun run -d --ready-port P --ready-timeout T IMAGE ...` (the plan picks SOCI lazy loading: a v2
            index made by `soci convert`); it returns when the port answers, and its `container_ready` event
            says how many bytes SOCI had fetched by then;
- parallel: the same with `--snapshotter overlayfs --pull-mode parallel` (socirun's full pull);
- ctr:      `ctr images pull` + `ctr run -d --net-host` of the same layers without an index (containerd 2.x's own
            full pull), and this script's own TCP probe of the port every 50 ms from the host.

Every container uses the host's network (socirun `--net host`, ctr `--net-host`), so all three are probed the
same way, at 127.0.0.1:PORT (the server binds loopback only); no CNI is involved. The server is busybox
`httpd -f -p 127.0.0.1:PORT` after `cat FILES > /dev/null`. The registry is behind a cap of --rate per
connection (default 25 MB/s), no total cap. Every run starts cold (lazy_vs_full.py's way: soci_bench.cold);
the three alternate, for --rounds rounds. Bytes fetched until ready: for lazy, what socirun's container_ready
says SOCI held then (SOCI's metrics); for the full pulls, the whole image.

    python bench/time_to_ready.py [--layers 600,900,700] [--read-mb 300] [--rounds 3] [--rate 25MB]

The last line is exactly `full/lazy ready-time ratio R`, full being ctr.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import soci_bench
from lazy_vs_full import SEED, box_env, files_to_read  # SEED: files_to_read lists that sample's files

from socirun.sandbox.components import containerd2_dir

NAME = "bench/ready"
MB = soci_bench.MB
CTR_CONTAINER = "bench-ready-ctr"
SOCIRUN_CONTAINER = "bench-ready"
READY_TIMEOUT_S = 1800
PROBE_EVERY_S = 0.05
LIST_IN_CONTAINER = "/bench-read-list"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def socirun_ready(cmd: list[str], env: dict[str, str]) -> tuple[float, int | None]:
    """Seconds until `socirun run -d --ready-port …` returned ready, and the bytes its container_ready says SOCI
    had fetched by then (None for a full pull)."""
    start = time.monotonic()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - start
    ready = [r for r in (json.loads(line) for line in done.stderr.splitlines() if line.startswith("{"))
             if r.get("type") == "container_ready"]
    if done.returncode != 0 or not ready:
        errors = [r.get("message") for r in (json.loads(line) for line in done.stderr.splitlines()
                                             if line.startswith("{")) if r.get("type") == "error"]
        said = subprocess.run([*cmd[:3], "logs", "--tail", "20", SOCIRUN_CONTAINER], env=env, capture_output=True,
                              text=True, check=False)
        raise SystemExit(f"`{' '.join(cmd[:10])} ...` failed (exit {done.returncode}): {errors or done.stderr[-500:]}"
                         f"; the container's last lines: {(said.stdout + said.stderr).strip()[-1500:]}")
    fetched = ready[-1].get("fetched")
    return elapsed, None if fetched is None else int(fetched)


def ctr_ready(address: str, ref: str, port: int, script: str, read_list: Path) -> float:
    """Seconds from `ctr images pull` until the server in `ctr run -d --net-host` answers on `port`."""
    ctr = [str(containerd2_dir() / "ctr"), "-a", address, "-n", "default"]
    start = time.monotonic()
    soci_bench.ctr2(address, "images", "pull", "--plain-http", ref)
    mount = f"type=bind,src={read_list},dst={LIST_IN_CONTAINER},options=rbind:ro"
    run = subprocess.run([*ctr, "run", "-d", "--net-host", "--mount", mount, ref, CTR_CONTAINER, "sh", "-c", script],
                         capture_output=True, text=True, check=False)
    if run.returncode != 0:
        raise SystemExit(f"`ctr run` failed: {run.stderr.strip()[-1000:]}")
    deadline = start + READY_TIMEOUT_S
    while not answers(port):
        if time.monotonic() > deadline:
            raise SystemExit(f"the ctr container did not listen on 127.0.0.1:{port} in {READY_TIMEOUT_S} s")
        time.sleep(PROBE_EVERY_S)
    return time.monotonic() - start


def remove_ctr(address: str) -> None:
    soci_bench.ctr2(address, "tasks", "kill", "-s", "SIGKILL", CTR_CONTAINER, check=False)
    deadline = time.monotonic() + 30
    while soci_bench.ctr2(address, "tasks", "rm", CTR_CONTAINER, check=False).returncode != 0:
        if "not found" in soci_bench.ctr2(address, "tasks", "ls").stdout or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    soci_bench.ctr2(address, "containers", "rm", CTR_CONTAINER, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--layers", default="600,900,700", help="data layer sizes, MiB of files (uncompressed)")
    parser.add_argument("--read-mb", type=float, default=300, help="MB of files the server reads before it listens")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rate", default="25MB", help="per-connection cap in front of the registry")
    parser.add_argument("--dir", default="/tmp/socirun-bench-ready")
    parser.add_argument("--keep", action="store_true", help="leave the sandbox running afterwards")
    args = parser.parse_args()
    layers = [float(x) for x in args.layers.split(",")]

    image = soci_bench.sample(layers, SEED)
    reads = files_to_read(layers, min(1.0, args.read_mb * MB / image.total_size), image.total_size)
    read_bytes = sum(f.size for f in reads)
    port = free_port()
    print(f"the server reads {len(reads)} files, {read_bytes / MB:.1f} MB "
          f"({100 * read_bytes / image.total_size:.1f}% of the compressed image), then listens on 127.0.0.1:{port}")
    # The list goes in as a read-only bind-mounted file: thousands of paths do not fit one argument (the kernel's
    # 128 KiB MAX_ARG_STRLEN).
    Path(args.dir).mkdir(parents=True, exist_ok=True)
    read_list = Path(args.dir) / "read-list"
    read_list.write_text("".join(f"{f.path}\n" for f in reads))
    script = f"xargs cat < {LIST_IN_CONTAINER} > /dev/null && exec httpd -f -p 127.0.0.1:{port} -h /tmp"

    with soci_bench.soci_sandbox(args.dir, NAME, layers, SEED, args.rate, keep=args.keep) as bench:
        box, info, settings = bench.box, bench.info, bench.settings
        lazy_ref, plain_ref = bench.lazy_ref, bench.plain_ref
        env = dict(box_env(box, info), SOCIRUN_DATA_ROOT=str(Path(args.dir) / "socirun-data"))
        socirun = [sys.executable, "-m", "socirun"]
        run = [*socirun, "run", "-d", "--name", SOCIRUN_CONTAINER, "--net", "host", "--progress", "json",
               "--ready-port", str(port), "--ready-timeout", f"{READY_TIMEOUT_S}s",
               "-v", f"{read_list}:{LIST_IN_CONTAINER}:ro"]
        commands = {
            "lazy": [*run, lazy_ref, "sh", "-c", script],
            "parallel": [*run, "--snapshotter", "overlayfs", "--pull-mode", "parallel", plain_ref, "sh", "-c",
                         script],
        }
        runs: dict[str, list[float]] = {"lazy": [], "parallel": [], "ctr": []}
        fetched: list[int] = []
        names = list(runs)
        print(f"cap {args.rate}/s per connection, no total cap; {args.rounds} rounds, alternating")
        for round_no in range(args.rounds):
            for name in names[round_no % 3:] + names[:round_no % 3]:
                soci_bench.cold(box, info, [lazy_ref, plain_ref], settings)
                if answers(port):
                    raise SystemExit(f"127.0.0.1:{port} answers before the server started; is it in use?")
                extra = ""
                try:
                    if name == "ctr":
                        seconds = ctr_ready(info.containerd_address, plain_ref, port, script, read_list)
                    else:
                        seconds, lazy_bytes = socirun_ready(commands[name], env)
                        if name == "lazy":
                            fetched.append(lazy_bytes or 0)
                            extra = f", SOCI had fetched {fetched[-1] / MB:.1f} MB"
                finally:
                    if name == "ctr":
                        remove_ctr(info.containerd_address)
                    else:
                        subprocess.run([*socirun, "rm", "-f", SOCIRUN_CONTAINER], env=env, capture_output=True,
                                       check=False)
                runs[name].append(seconds)
                print(f"  round {round_no + 1}: {name:8s} ready after {seconds:7.2f} s{extra}", flush=True)
        soci_bench.cold(box, info, [lazy_ref, plain_ref], settings)

    med = {name: statistics.median(values) for name, values in runs.items()}
    lazy_fetched = statistics.median(fetched)
    print("| way | median time to ready | bytes fetched until ready |")
    print("|---|---|---|")
    print(f"| socirun, lazy (SOCI) | {med['lazy']:.2f} s | {lazy_fetched / MB:.1f} MB "
          f"({100 * lazy_fetched / image.total_size:.1f}%) |")
    print(f"| socirun, parallel pull | {med['parallel']:.2f} s | {image.total_size / MB:.0f} MB (all) |")
    print(f"| ctr pull + ctr run | {med['ctr']:.2f} s | {image.total_size / MB:.0f} MB (all) |")
    print(f"parallel/lazy ready-time ratio {med['parallel'] / med['lazy']:.1f}")
    print(f"full/lazy ready-time ratio {med['ctr'] / med['lazy']:.1f}")


if __name__ == "__main__":
    main()
