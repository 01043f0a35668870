"""The cgroups metrics that containerd's Tasks.Metrics wraps in an Any (`io.containerd.cgroups.v1.Metrics` /
`io.containerd.cgroups.v2.Metrics`).

Not containerd's API protos: scripts/gen_containerd_stubs.py does not make them and replaces socirun/containerd/api/
wholesale, so run the command below again after it. Made from github.com/containerd/
cgroups v3.1.3 `cgroup1/stats/metrics.proto` and `cgroup2/stats/metrics.proto` (package names unchanged, so the
wire format and type URLs are containerd's) with:
    python -m grpc_tools.protoc -I<stage> --python_out=. --pyi_out=. \\
        socirun/containerd/api/cgroups/v1/metrics.proto socirun/containerd/api/cgroups/v2/metrics.proto
where <stage> holds the two files copied to those paths.
"""
