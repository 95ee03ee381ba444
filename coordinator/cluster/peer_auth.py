"""Peer authentication by the cluster secret: a mutual HMAC challenge (DESIGN §13).

Sans-IO. The accepting side sends a random nonce; the connecting side
answers with its node id, ``HMAC-SHA256(secret, "ringkv-peer-v1" | nonce |
node id)`` and a nonce of its own; the acceptor checks the proof in constant
time and answers the connector's nonce the same way under another label
(``"ringkv-peer-v2-server"``, so one side's proof is never valid as the
other's). The secret never crosses the wire, and a recorded proof is
useless for another connection because the nonces differ. Each side then
knows the other holds the secret: a node never applies data from, nor
believes replies of, a peer without it.

The proofs alone do not bind what follows them (a relay could pass the
handshake through and then inject frames), so :func:`session_keys` derives
a key per direction from the secret and the whole handshake, and
``shardserver.protocol.session`` tags every later frame with them.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

NONCE_BYTES = 32
CLIENT = b"ringkv-peer-v1"
SERVER = b"ringkv-peer-v2-server"


SESSION = b"ringkv-peer-v3-session"


class PeerAuthError(Exception):
    """The peer did not prove it holds the cluster secret."""


def new_nonce() -> bytes:
    return secrets.token_bytes(NONCE_BYTES)


def answer(secret: bytes, nonce: bytes, node_id: str, label: bytes = CLIENT) -> bytes:
    """The proof that ``node_id`` holds ``secret``, for the other side's ``nonce``."""
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
        raise PeerAuthError(f"challenge nonce must be {NONCE_BYTES} bytes")
    msg = b"|".join((label, nonce, node_id.encode()))
    return hmac.new(secret, msg, hashlib.sha256).digest()


def verify(secret: bytes, nonce: bytes, node_id: str, proof: bytes,
           label: bytes = CLIENT) -> None:
    """Raise PeerAuthError unless ``proof`` answers ``nonce`` for ``node_id``."""
    if not isinstance(proof, bytes) or len(proof) != hashlib.sha256().digest_size:
        raise PeerAuthError(f"peer {node_id!r} sent a malformed proof")
    if not hmac.compare_digest(answer(secret, nonce, node_id, label), proof):
        raise PeerAuthError(f"peer {node_id!r} does not know the cluster secret")


def session_keys(secret: bytes, server_nonce: bytes, client_nonce: bytes,
                 server_id: str, client_id: str) -> tuple[bytes, bytes]:
    """(client→server key, server→client key) of one connection, by
    HMAC-SHA256 as a PRF: keyed by the secret over both nonces and both node
    ids, then one expand step per direction (HKDF's shape, RFC 5869). Each
    connection, and each direction of it, gets keys of its own that only
    holders of the secret can compute."""
    ids = server_id.encode(), client_id.encode()
    info = b"|".join((SESSION, server_nonce, client_nonce,
                      len(ids[0]).to_bytes(2, "big"), ids[0], ids[1]))
    prk = hmac.new(secret, info, hashlib.sha256).digest()
    return (hmac.new(prk, b"client->server\x01", hashlib.sha256).digest(),
            hmac.new(prk, b"server->client\x01", hashlib.sha256).digest())
