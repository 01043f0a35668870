"""containerd API stubs: cgroups/v2 (generated; see ../__init__.py)."""
