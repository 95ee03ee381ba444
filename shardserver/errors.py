"""Errors the shard store raises on purpose (not engine errors).

``shardserver.handlers.error_status`` turns each into a wire status; that is
the only place they are translated.
"""

from __future__ import annotations


class ShardStoreError(Exception):
    """Base of the errors the store raises on purpose."""


class BadRequestError(ShardStoreError, ValueError):
    """Key, partition or argument out of range."""


class PartitionNotServedError(ShardStoreError):
    """The partition is outside this worker's range."""


class PartitionDroppingError(ShardStoreError):
    """The partition is being dropped; retry after the drop finished."""


class PartitionChangedError(ShardStoreError):
    """A conditional drop found writes its caller did not see: not dropped."""
