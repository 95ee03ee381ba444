"""Peer authentication by the cluster secret: an HMAC challenge (DESIGN §13).

Sans-IO. The accepting side sends a random nonce; the connecting side
answers with its node id and ``HMAC-SHA256(secret, "ringkv-peer-v1" | nonce |
node id)``; the acceptor recomputes and compares in constant time. The
secret never crosses the wire, and a recorded answer is useless for another
connection because the nonce differs. Both sides then know the peer holds
the secret; a peer without it is refused and logged by the caller.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

NONCE_BYTES = 32
_LABEL = b"ringkv-peer-v1"


class PeerAuthError(Exception):
    """The peer did not prove it holds the cluster secret."""


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def answer(secret: bytes, nonce: bytes, node_id: str) -> bytes:
    if len(nonce) != NONCE_BYTES:
        raise PeerAuthError(f"challenge nonce must be {NONCE_BYTES} bytes, got {len(nonce)}")
    msg = b"|".join((_LABEL, nonce, node_id.encode()))
    return hmac.new(secret, msg, hashlib.sha256).digest()


def verify(secret: bytes, nonce: bytes, node_id: str, proof: bytes) -> None:
    """Raise PeerAuthError unless ``proof`` answers ``nonce`` for ``node_id``."""
    if not isinstance(proof, bytes) or len(proof) != hashlib.sha256().digest_size:
        raise PeerAuthError(f"peer {node_id!r} sent a malformed proof")
    if not hmac.compare_digest(answer(secret, nonce, node_id), proof):
        raise PeerAuthError(f"peer {node_id!r} does not know the cluster secret")
