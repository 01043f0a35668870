"""One round of the registry fault campaign (issue 12), shared by tests/integration/test_faults.py and
bench/faults.py: a sample image in its own containerd namespace, `socirun pull` through a `FaultProxy` with one
fault, the outcome classified, what it left counted, then a normal pull that must succeed.

Outcomes: `completed` (exit 0 and the image's manifest, config and layers are in the content store and every
layer's chain ID is a committed snapshot), `refused` (exit 125 and stderr is exactly one line, `socirun: ...`,
no traceback), anything else `other`. Leaks: after a completed pull, no lease and no ingest may remain and, once
the image is removed with a synchronous GC, nothing of it; after a refused pull, no image record and no snapshot
may remain, the only lease allowed is socirun's documented resume lease (socirun/pull/leases.py: purpose=resume,
expiring within 24 h), and once that is removed nothing may remain.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from socirun.oci import chain_ids
from tests.support.faultproxy import Fault, FaultProxy
from tests.support.leaks import Leaks, count_leaks, drop_resume_leases, leases, resume_leases
from tests.support.sandbox import registry_json
from tests.support.socirun_env import socirun_vars

PULL_MODES = ("standard", "parallel")
# The fault matrix: name -> (fault or None, TLS variant). "tls-insecure": the registry is an --insecure-registry,
# so socirun tries https first and meets a plain-HTTP port (then falls back to http); "tls-https": hosts.toml says
# https, so it must refuse.
FAULTS: dict[str, tuple[Fault | None, str]] = {
    "reset after 64 KiB": (Fault("reset"), ""),
    "503 + Retry-After, once": (Fault("503"), ""),
    "429 + Retry-After, once": (Fault("429"), ""),
    "429 on the manifest, once": (Fault("429", manifests=True), ""),
    "stall after 64 KiB": (Fault("stall", stall_s=300.0), ""),
    "one flipped byte": (Fault("flip", after=100_000), ""),
    "short body, then close": (Fault("short"), ""),
    "TLS hello to plain HTTP (insecure: https first)": (None, "tls-insecure"),
    "TLS hello to plain HTTP (hosts.toml says https)": (None, "tls-https"),
}


@dataclass
class Outcome:
    fault: str
    mode: str
    code: int
    stderr: str
    seconds: float
    fired: int  # how many responses the proxy changed (or TLS hellos it saw)
    completed: bool = False
    refused: bool = False
    leaks: Leaks = field(default_factory=Leaks)
    leak_notes: list[str] = field(default_factory=list)
    resume_leases: int = 0
    recovered: bool = False  # the normal pull afterwards succeeded

    @property
    def other(self) -> bool:
        return not (self.completed or self.refused)


def one_sentence(stderr: str) -> bool:
    """docker's error shape: exactly one line, `socirun: ...`, and no traceback."""
    lines = stderr.strip().splitlines()
    return len(lines) == 1 and lines[0].startswith("socirun: ") and "Traceback" not in stderr


class Campaign:
    """The sample `name:tag` (already pushed to `registry_host`) pulled through its own FaultProxy into
    `namespace` of the containerd at `address`. Use as a context manager (it starts and stops the proxy)."""

    def __init__(self, *, address: str, registry_host: str, name: str, tag: str, namespace: str,
                 workdir: Path, ctr: str = "ctr") -> None:  # fmt: skip
        self.address = address
        self.registry_host = registry_host
        self.name = name
        self.tag = tag
        self.namespace = namespace
        self.workdir = workdir
        self.ctr = ctr
        self.proxy = FaultProxy(registry_host)
        self.data_root = workdir / "data"
        manifest = registry_json(registry_host, name, tag)
        config = json.loads(_registry_blob(registry_host, name, manifest["config"]["digest"]))
        self.layers = [layer["digest"] for layer in manifest["layers"]]
        self.largest = max(manifest["layers"], key=lambda layer: int(layer["size"]))["digest"]
        self.config_digest = manifest["config"]["digest"]
        self.chain = chain_ids(list(config["rootfs"]["diff_ids"]))

    def __enter__(self) -> Campaign:
        self.proxy.start()
        self.data_root.mkdir(parents=True, exist_ok=True)
        https = self.workdir / "certs-https" / self.proxy.address
        https.mkdir(parents=True, exist_ok=True)
        (https / "hosts.toml").write_text(f'server = "https://{self.proxy.address}"\n')
        self.forget()
        return self

    def __exit__(self, *exc: object) -> None:
        self.forget()
        self.proxy.stop()

    @property
    def ref(self) -> str:
        return f"{self.proxy.address}/{self.name}:{self.tag}"

    # -- containerd ------------------------------------------------------------------------------------------

    def ctr_run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([self.ctr, "-a", self.address, "-n", self.namespace, *args], capture_output=True,
                              text=True, timeout=120, check=False)  # fmt: skip
        if check and done.returncode != 0:
            raise RuntimeError(f"`ctr {' '.join(args)}` exited {done.returncode}: {done.stderr.strip()}")
        return done

    def forget(self) -> None:
        """Remove the image and socirun's resume leases, collecting synchronously: the next pull starts cold."""
        self.ctr_run("images", "rm", "--sync", self.ref, check=False)
        drop_resume_leases(self.ctr, self.address, self.namespace)

    def leaks(self, baseline: Leaks | None = None) -> Leaks:
        return count_leaks(ctr=self.ctr, address=self.address, namespace=self.namespace, data_root=self.data_root,
                           baseline=baseline)  # fmt: skip

    def image_present(self) -> bool:
        return self.ref in self.ctr_run("images", "ls", "-q").stdout.split()

    def image_complete(self) -> str:
        """"" when the image record, its manifest, config and layers and its committed snapshots are all there;
        else what is missing."""
        if not self.image_present():
            return "no image record"
        content = set(self.ctr_run("content", "ls", "-q").stdout.split())
        missing = [d for d in [self.config_digest, *self.layers] if d not in content]
        if missing:
            return f"content missing: {missing}"
        committed = {row.split()[0] for row in self.ctr_run("snapshots", "ls").stdout.splitlines()[1:]
                     if row.split()[-1:] == ["Committed"]}  # fmt: skip
        absent = [c for c in self.chain if c not in committed]
        return f"snapshots not committed: {absent}" if absent else ""

    # -- pulls -----------------------------------------------------------------------------------------------

    def pull_argv(self, mode: str, tls: str = "") -> list[str]:
        argv = [sys.executable, "-m", "socirun", "pull", "--progress", "quiet", "--pull-mode", mode]
        if tls == "tls-insecure":
            argv += ["--insecure-registry", self.proxy.address]
        elif tls == "tls-https":
            argv += ["--hosts-dir", str(self.workdir / "certs-https")]
        return [*argv, self.ref]

    def env(self) -> dict[str, str]:
        return socirun_vars(self.address, self.data_root, self.workdir / "config", namespace=self.namespace)

    def pull(self, mode: str, tls: str = "", timeout: float = 400) -> tuple[int, str, float]:
        start = time.monotonic()
        done = subprocess.run(self.pull_argv(mode, tls), capture_output=True, text=True, env=self.env(),
                              timeout=timeout, check=False)  # fmt: skip
        return done.returncode, done.stderr, time.monotonic() - start

    def run_case(self, fault_name: str, mode: str) -> Outcome:
        """One fault, one mode, from a cold store: the outcome, what it left, and whether a normal pull then
        works."""
        fault, tls = FAULTS[fault_name]
        self.forget()
        baseline = self.leaks()
        self.proxy.inject(_aimed(fault, self.largest))
        code, stderr, seconds = self.pull(mode, tls)
        fired = self.proxy.tls_hellos if tls else self.proxy.injected
        self.proxy.inject(None)
        out = Outcome(fault_name, mode, code, stderr, seconds, fired)
        after = self.leaks(baseline)
        if code == 0:
            problem = self.image_complete()
            out.completed = not problem
            if problem:
                out.leak_notes.append(f"exit 0 but {problem}")
            if after.leases or after.ingests:
                out.leak_notes.append(f"after a completed pull: {after.nonzero()}")
        else:
            out.refused = code == 125 and one_sentence(stderr)
            kept = resume_leases(self.ctr, self.address, self.namespace)
            out.resume_leases = len(kept)
            other_leases = len(leases(self.ctr, self.address, self.namespace)) - len(kept)
            if self.image_present() or after.snapshots:
                out.leak_notes.append(f"partial image committed: {after.nonzero()}")
            if other_leases or len(kept) > 1:
                out.leak_notes.append(f"{other_leases} leases besides {len(kept)} resume leases")
        self.forget()
        final = self.leaks(baseline)
        out.leaks = final
        if final.total():
            out.leak_notes.append(f"after cleanup: {final.nonzero()}")
        # A normal pull afterwards must succeed and be complete.
        again, again_err, _ = self.pull(mode)
        out.recovered = again == 0 and not self.image_complete()
        if not out.recovered:
            out.leak_notes.append(f"the normal pull afterwards: exit {again}: {again_err.strip()[-300:]}")
        self.forget()
        return out


def _aimed(fault: Fault | None, digest: str) -> Fault | None:
    """Blob faults hit the largest layer (the config is fetched whole during resolve, a separate path)."""
    if fault is None or fault.manifests or fault.digest:
        return fault
    return dataclasses.replace(fault, digest=digest)


def _registry_blob(host: str, name: str, digest: str) -> bytes:
    from tests.support.sandbox import registry_get

    status, body = registry_get(host, f"{name}/blobs/{digest}")
    if status != 200:
        raise RuntimeError(f"GET blob {digest} of {name}: HTTP {status}")
    return body
