"""The SOCI emulator: a stand-in for soci-snapshotter-grpc in the sandbox, for demos, tests and benchmarks.

It reproduces SOCI's *external* contract (https://github.com/awslabs/soci-snapshotter/blob/v0.15.0/docs/pull-modes.md
and snapshot/snapshot.go), and nothing more:

- a containerd proxy snapshotter (`[proxy_plugins.soci] type = "snapshot"`) serving the Snapshots gRPC API on
  a unix socket, with real directories and real overlay/bind mounts, so containers really run on its snapshots;
- SOCI's Prepare outcomes for the same inputs (target + `cri.*` labels): ALREADY_EXISTS after committing the
  snapshot itself for layers it "mounts lazily" (a zTOC in the SOCI index found through the explicit label, the
  v2 manifest annotation, the v1 referrers API or the referrers tag) and for layers it fetches whole (no zTOC,
  or parallel mode: `[pull_modes.parallel_pull_unpack] enable` in its own config.toml); mounts returned
  (defer to the runtime) when there is no index;
- SOCI's metric names on a metrics endpoint (tcp or unix), per-layer state files
  (`<snapshot>/fs/.soci-snapshotter/<digest>.json`), and SOCI's JSON log lines on stderr.

What is emulated, precisely:

- **Lazy loading.** There is no FUSE filesystem and the zTOC bytes are never read (the sample's zTOCs are
  placeholders). A "lazily mounted" layer is an empty directory committed at once; a background worker then
  reads the layer blob from the registry in 4 MiB ranged requests, span by span (one `fetching span` log line
  and one `background_span_fetch_count` per span, with an optional pause per span), decompresses the stream and
  writes the layer's files into that directory as they arrive. A container therefore starts before big layers
  are complete, and sees each file once the background fill has reached it — a file read before that is
  *missing*, where real SOCI would fetch its span on demand (so `synchronous_read_remote_registry_fetch_count`
  stays 0 here). The fill writes into an overlay lower directory that may be mounted, which Linux tolerates
  for new files.
- **Fetched bytes** are the compressed bytes read from the registry so far (`soci_fs_layer_fetched_size_bytes`),
  like SOCI's union of fetched ranges; the background fetch duration is observed once, at completion.
- **Restarts** keep the snapshots (metadata in `<root>/metadata.json`) but do not resume a background fill that
  was cut short: such a layer stays incomplete until its image is removed and pulled again.
- **Namespace**: containerd 1.6 does not forward the `containerd-namespace` header to proxy plugins, so the
  emulator takes it from the backend snapshot key (`<namespace>/<n>/<key>`).
- **Parallel and local fetches** download the whole blob in one stream and unpack it; the manifest is read
  from containerd's content store, as SOCI does.

Run it with `python -m socirun.sandbox.soci_emulator --root DIR --address SOCK --containerd-address CTD
[--config config.toml] [--span-pace-ms N]`; `socirun sandbox up --soci` does that and registers it.
"""

LABEL = "SOCI emulator"
