"""containerd API stubs: cgroups/v1 (generated; see ../__init__.py)."""
