"""Write batches: several puts, deletes and merges applied atomically."""

from __future__ import annotations

from lsm.keys import KIND_DELETE, KIND_MERGE, KIND_VALUE, Op


class WriteBatch:
    """Operations applied in order by ``DB.write`` as one WAL record; either
    all of them survive a crash or none does."""

    __slots__ = ("_bytes", "ops")

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self._bytes = 0

    def put(self, key: bytes, value: bytes) -> WriteBatch:
        self.ops.append((KIND_VALUE, key, value))
        self._bytes += len(key) + len(value)
        return self

    def delete(self, key: bytes) -> WriteBatch:
        self.ops.append((KIND_DELETE, key, b""))
        self._bytes += len(key)
        return self

    def merge(self, key: bytes, operand: bytes) -> WriteBatch:
        """Apply ``operand`` to the key's value with ``Options.merge_operator``."""
        self.ops.append((KIND_MERGE, key, operand))
        self._bytes += len(key) + len(operand)
        return self

    def clear(self) -> None:
        self.ops.clear()
        self._bytes = 0

    def byte_size(self) -> int:
        """Key, value and operand bytes in the batch."""
        return self._bytes

    def __len__(self) -> int:
        return len(self.ops)
