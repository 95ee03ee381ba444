"""Errors a worker raises on purpose (not engine errors, which are
``lsm.errors``; those of the wire and of what coordinators share are
``shardserver.protocol.errors``).

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


class WorkerConfigError(ValueError):
    """A worker config that does not decode or does not make sense."""
