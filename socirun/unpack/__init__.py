"""socirun's own layer applier: a layer blob unpacked into a prepared snapshot's mounts as its bytes arrive.

containerd's pull writes each blob through Content.Write and only then unpacks it with Diff.Apply from the
committed blob, layer after layer. This package does the unpack itself, on the stream, with the semantics of
containerd's own applier (archive.Apply with the overlay whiteout conversion, as its diff/apply_linux.go uses it
when the mounts are one overlay with an upperdir): `target.apply_target` decides where to write, `apply.LayerApplier`
decompresses, parses and writes, and `snapshot.unpack_into_snapshot` drives one layer through containerd's
Prepare, the applier and Commit (or Remove when a digest does not match).
"""
