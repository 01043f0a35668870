import hashlib

from socirun.oci import Descriptor, chain_ids
from socirun.pull import labels as lb

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64


def test_chain_ids_follow_image_spec_formula() -> None:
    chain = chain_ids([D1, D2, D3])
    c1 = "sha256:" + hashlib.sha256(f"{D1} {D2}".encode()).hexdigest()
    c2 = "sha256:" + hashlib.sha256(f"{c1} {D3}".encode()).hexdigest()
    assert chain == [D1, c1, c2]


def test_manifest_and_index_gc_labels() -> None:
    config = Descriptor("application/vnd.oci.image.config.v1+json", D1, 10)
    layers = [Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", d, 5) for d in (D2, D3)]
    assert lb.manifest_labels(config, layers) == {
        "containerd.io/gc.ref.content.config": D1,
        "containerd.io/gc.ref.content.l.0": D2,
        "containerd.io/gc.ref.content.l.1": D3,
    }
    assert lb.index_labels(layers) == {
        "containerd.io/gc.ref.content.m.0": D2,
        "containerd.io/gc.ref.content.m.1": D3,
    }
    assert lb.snapshot_gc_label("overlayfs", D3) == {"containerd.io/gc.ref.snapshot.overlayfs": D3}


def test_distribution_source_drops_port_and_merges_sorted() -> None:
    assert lb.distribution_source_label("localhost:5000", "foo") == {
        "containerd.io/distribution.source.localhost": "foo"
    }
    assert lb.distribution_source_label("docker.io", "library/alpine", "z/z,a/b,library/alpine") == {
        "containerd.io/distribution.source.docker.io": "a/b,library/alpine,z/z"
    }
    assert lb.distribution_source_label("[::1]:5000", "x") == {"containerd.io/distribution.source.::1": "x"}
    assert lb.distribution_source_label("h", "r" * 5000) == {}


def test_remote_snapshot_labels_list_this_and_later_layers_within_limit() -> None:
    layers = [Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", f"sha256:{i:064x}", 1) for i in range(200)]
    labels = lb.remote_snapshot_labels("r/x:1", D1, layers, 3)
    assert labels[lb.CRI_LAYER_DIGEST] == layers[3].digest
    assert labels[lb.CRI_MANIFEST_DIGEST] == D1
    listed = labels[lb.CRI_IMAGE_LAYERS].split(",")
    assert listed[0] == layers[3].digest and listed == [d.digest for d in layers[3 : 3 + len(listed)]]
    assert len(lb.CRI_IMAGE_LAYERS) + len(labels[lb.CRI_IMAGE_LAYERS]) <= lb.MAX_LABEL_BYTES
    assert len(listed) < 197  # 200 digests do not fit in 4096 bytes, so the list was cut


def test_unpack_key_has_containerd_shape() -> None:
    key = lb.unpack_key(D2)
    prefix, chain = key.split(" ")
    assert prefix.startswith("extract-") and chain == D2
    assert lb.unpack_key(D2) != key


def test_ingest_refs() -> None:
    assert lb.ingest_ref(Descriptor("application/vnd.oci.image.layer.v1.tar+gzip", D1, 1)) == f"layer-{D1}"
    assert lb.ingest_ref(Descriptor("application/vnd.oci.image.manifest.v1+json", D1, 1)) == f"manifest-{D1}"
    assert lb.ingest_ref(Descriptor("application/vnd.docker.distribution.manifest.list.v2+json", D1, 1)) == (
        f"index-{D1}"
    )
    assert lb.ingest_ref(Descriptor("application/vnd.oci.image.config.v1+json", D1, 1)) == f"config-{D1}"
    assert lb.ingest_ref(Descriptor("text/plain", D1, 1)) == f"unknown-{D1}"
