"""The pull engine: brings an image's content and snapshots into containerd, reporting through events."""
