from __future__ import annotations

import pytest

from coordinator.cluster.peer_auth import SERVER, PeerAuthError, answer, new_nonce, verify


def test_right_secret_passes_and_wrong_secret_or_replay_fails() -> None:
    nonce = new_nonce()
    proof = answer(b"s3cret", nonce, "n2")
    verify(b"s3cret", nonce, "n2", proof)
    with pytest.raises(PeerAuthError, match="does not know the cluster secret"):
        verify(b"s3cret", nonce, "n2", answer(b"guess", nonce, "n2"))
    with pytest.raises(PeerAuthError, match="does not know"):
        verify(b"s3cret", new_nonce(), "n2", proof)  # replay on a new connection
    with pytest.raises(PeerAuthError, match="does not know"):
        verify(b"s3cret", nonce, "n3", proof)  # proof is bound to the node id
    with pytest.raises(PeerAuthError, match="malformed"):
        verify(b"s3cret", nonce, "n2", b"short")
    with pytest.raises(PeerAuthError, match="nonce must be"):
        answer(b"s3cret", b"x", "n2")
    assert new_nonce() != new_nonce()


def test_a_proof_of_one_side_is_no_proof_of_the_other() -> None:
    """Reflection: a server must not pass by echoing the client's own kind of
    proof for the client's nonce back to it."""
    nonce = new_nonce()
    verify(b"s3cret", nonce, "n1", answer(b"s3cret", nonce, "n1", SERVER), SERVER)
    with pytest.raises(PeerAuthError, match="does not know"):
        verify(b"s3cret", nonce, "n1", answer(b"s3cret", nonce, "n1"), SERVER)
