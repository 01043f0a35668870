"""Reference normalisation against docker's own cases (distribution/reference normalize tests); aliases."""

from __future__ import annotations

import pytest

from socirun.errors import UsageError
from socirun.reference import ImageReference, expand_alias, parse_reference

D = "sha256:" + "dbcc1c35ac38df41fd2f5e4130b32ffdb93ebae8b3dbe638c23575912276fc9c"
HEX64 = "1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ubuntu", "docker.io/library/ubuntu:latest"),
        ("ubuntu:22.04", "docker.io/library/ubuntu:22.04"),
        ("user/repo", "docker.io/user/repo:latest"),
        ("docker.io/ubuntu", "docker.io/library/ubuntu:latest"),
        ("index.docker.io/ubuntu", "docker.io/library/ubuntu:latest"),
        ("index.docker.io/library/ubuntu-12.04-base", "docker.io/library/ubuntu-12.04-base:latest"),
        ("docker.io/library/foo/bar", "docker.io/library/foo/bar:latest"),
        ("store/foo/bar", "docker.io/store/foo/bar:latest"),
        ("localhost:5000/foo", "localhost:5000/foo:latest"),
        ("localhost/privatebase", "localhost/privatebase:latest"),
        ("127.0.0.1:5000/a/b:tag", "127.0.0.1:5000/a/b:tag"),
        ("[::1]:5000/x", "[::1]:5000/x:latest"),
        ("[fc00:1:2:3:4:5:6:7]:5000/library/debian", "[fc00:1:2:3:4:5:6:7]:5000/library/debian:latest"),
        ("example.com:8000/private/moonbase", "example.com:8000/private/moonbase:latest"),
        ("test-com:8080/foo", "test-com:8080/foo:latest"),
        ("test_com/foo", "docker.io/test_com/foo:latest"),
        ("xn--n3h.com:18080/foo", "xn--n3h.com:18080/foo:latest"),
        ("Foo/bar", "Foo/bar:latest"),  # an uppercase first component is a registry, not a Hub user
        ("192.168.0.1", "docker.io/library/192.168.0.1:latest"),
        ("192.168.0.1:80", "docker.io/library/192.168.0.1:80"),  # a lone element is a name, :80 its tag
        ("dock__er/docker", "docker.io/dock__er/docker:latest"),
        ("docker---rules/docker", "docker.io/docker---rules/docker:latest"),
        ("d/docker", "docker.io/d/docker:latest"),
        (f"docker.io/{HEX64}", f"docker.io/library/{HEX64}:latest"),
        (f"redis@{D}", f"docker.io/library/redis@{D}"),
        (f"dmcgowan/myapp@{D}", f"docker.io/dmcgowan/myapp@{D}"),
        (f"busybox:latest@{D}", f"docker.io/library/busybox:latest@{D}"),
        ("ubuntu:Tag_With.Caps-1", "docker.io/library/ubuntu:Tag_With.Caps-1"),
        (
            "public.ecr.aws/deep-learning-containers/vllm:0.19.0-gpu-py312-ec2-soci",
            "public.ecr.aws/deep-learning-containers/vllm:0.19.0-gpu-py312-ec2-soci",
        ),
    ],
)
def test_normalises_like_docker(text: str, expected: str) -> None:
    assert str(parse_reference(text)) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "https://github.com/docker/docker",
        "docker/Docker",
        "docker.io/docker/Docker",
        "Uppercase:tag",
        "-docker",
        "-docker/docker",
        "docker-/docker",
        "-docker.io/docker/docker",
        "docker///docker",
        "docker.io/docker///docker",
        "____/____",
        "_docker/_docker",
        "dock..er/docker",
        "dock_.er/docker",
        "dock-.er/docker",
        "docker/",
        "[fc00::1]",
        "[fc00::1]:5000",
        "fc00::1:5000/debian",
        "[fe80::1%eth0]:5000/debian",
        "[2001:db8:3:4::192.0.2.33]:5000/debian",
        HEX64,
        ":justtag",
        f"@{D}",
        "ubuntu:-badtag",
        "ubuntu:" + "a" * 129,
        "repo@sha256:abc",
        "repo@md5:" + "f" * 32,
        "repo@sha256:" + "F" * 64,
        "a" * 100 + "/" + "b" * 100 + "/" + "c" * 60,
    ],
)
def test_rejects_what_docker_rejects(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_reference(text)
    assert str(info.value).startswith("invalid reference format")
    assert info.value.exit_code == 125


def test_lowercase_message_names_the_repository() -> None:
    with pytest.raises(UsageError, match=r"repository name \(library/Ubuntu\) must be lowercase"):
        parse_reference("Ubuntu")


def test_parts_and_properties() -> None:
    ref = parse_reference("ubuntu")
    assert ref == ImageReference("docker.io", "library/ubuntu", "latest", None)
    assert ref.repository == "docker.io/library/ubuntu"
    assert ref.object == "latest"
    assert ref.hostname == "docker.io"
    assert ref.familiar() == "ubuntu:latest"

    pinned = ref.with_digest(D)
    assert str(pinned) == f"docker.io/library/ubuntu:latest@{D}"
    assert pinned.object == D
    assert pinned.docker_ref == f"docker.io/library/ubuntu@{D}"
    with pytest.raises(UsageError):
        ref.with_digest("sha256:nothex")

    digest_only = parse_reference(f"localhost:5000/foo@{D}")
    assert digest_only.tag is None and digest_only.digest == D
    assert digest_only.object == D
    assert digest_only.hostname == "localhost"  # distribution.source drops the port

    v6 = parse_reference("[::1]:5000/x")
    assert v6.domain == "[::1]:5000" and v6.path == "x" and v6.hostname == "::1"
    assert parse_reference("user/repo:tag").familiar() == "user/repo:tag"
    assert parse_reference("localhost:5000/foo").familiar() == "localhost:5000/foo:latest"
    assert ImageReference.parse("busybox") == parse_reference("busybox")


ALIASES = {"vllm": "public.ecr.aws/deep-learning-containers/vllm", "team/app": "registry.example.com/t/app"}


@pytest.mark.parametrize(
    ("text", "expanded", "used"),
    [
        (
            "vllm:0.19.0-gpu-py312-ec2-soci",
            "public.ecr.aws/deep-learning-containers/vllm:0.19.0-gpu-py312-ec2-soci",
            "vllm",
        ),
        ("vllm", "public.ecr.aws/deep-learning-containers/vllm", "vllm"),
        (f"vllm@{D}", f"public.ecr.aws/deep-learning-containers/vllm@{D}", "vllm"),
        ("team/app:1", "registry.example.com/t/app:1", "team/app"),
        # Docker Hub's vllm organisation must stay on Docker Hub.
        ("vllm/vllm-openai:latest", "vllm/vllm-openai:latest", None),
        ("docker.io/vllm", "docker.io/vllm", None),
        ("localhost:5000/vllm", "localhost:5000/vllm", None),
        ("vllmx:1", "vllmx:1", None),
        ("ubuntu", "ubuntu", None),
    ],
)
def test_expand_alias(text: str, expanded: str, used: str | None) -> None:
    assert expand_alias(text, ALIASES) == (expanded, used)


def test_alias_then_normalise() -> None:
    text, used = expand_alias("vllm:0.19.0-gpu-py312-ec2-soci", ALIASES)
    ref = parse_reference(text)
    assert used == "vllm"
    assert ref.domain == "public.ecr.aws"
    assert ref.path == "deep-learning-containers/vllm"
    assert ref.tag == "0.19.0-gpu-py312-ec2-soci"
