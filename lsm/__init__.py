"""ringkv's storage engine (see docs/engine.md); ``lsm.db.DB`` is the entry point."""

from lsm.merging import NOT_CACHED, NotCached

__all__ = ["NOT_CACHED", "NotCached"]
