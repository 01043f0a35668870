import pytest

from socirun.errors import SocirunError
from socirun.runtime import cni


def test_missing_ip_command_is_one_sentence_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    # Seen on a GPU host without iproute2: `ip netns add` must fail as a user error (exit 125).
    monkeypatch.setattr(cni.shutil, "which", lambda name: None)
    monkeypatch.setattr(cni.os.path, "exists", lambda path: False)
    with pytest.raises(SocirunError) as caught:
        cni.create_netns("socirun-test")
    assert caught.value.exit_code == 125 and "iproute2" in caught.value.message
