"""A private containerd + registry (and sample images to push into it) for tests, benchmarks and the demo."""
