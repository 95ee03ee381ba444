"""Write batches: several puts and deletes applied atomically."""

from __future__ import annotations

from lsm.keys import KIND_DELETE, KIND_VALUE


class WriteBatch:
    """Operations applied in order by ``DB.write`` as one WAL record; either
    all of them survive a crash or none does."""

    __slots__ = ("_bytes", "ops")

    def __init__(self) -> None:
        self.ops: list[tuple[int, bytes, bytes]] = []
        self._bytes = 0

    def put(self, key: bytes, value: bytes) -> WriteBatch:
        self.ops.append((KIND_VALUE, key, value))
        self._bytes += len(key) + len(value)
        return self

    def delete(self, key: bytes) -> WriteBatch:
        self.ops.append((KIND_DELETE, key, b""))
        self._bytes += len(key)
        return self

    def clear(self) -> None:
        self.ops.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self.ops)
