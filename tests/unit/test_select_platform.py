from socirun.oci import Descriptor, Platform
from socirun.registry.client import select_platform

AMD64 = {"os": "linux", "architecture": "amd64"}


def entry(digest_char: str, platform: dict[str, str], **extra: object) -> Descriptor:
    return Descriptor.from_json({"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                 "digest": "sha256:" + digest_char * 64, "size": 10, "platform": platform, **extra})


def test_soci_index_entry_first_in_the_index_is_never_chosen() -> None:
    soci = entry("a", AMD64, artifactType="application/vnd.amazon.soci.index.v2+json",
                 annotations={"com.amazon.soci.image-manifest-digest": "sha256:" + "b" * 64})
    image = entry("b", AMD64)
    assert select_platform([soci, image], Platform("linux", "amd64")) == image
    assert select_platform([soci], Platform("linux", "amd64")) is None


def test_exact_variant_wins_over_compatible_one() -> None:
    v7 = entry("c", {"os": "linux", "architecture": "arm", "variant": "v7"})
    v6 = entry("d", {"os": "linux", "architecture": "arm", "variant": "v6"})
    assert select_platform([v7, v6], Platform("linux", "arm", "v6")) == v6
    assert select_platform([v7, v6], Platform("linux", "arm")) == v7
