"""``ringkv shadow``: a Redis-protocol proxy that serves clients from a
primary Redis and mirrors their requests to ringkv, comparing replies and
latencies (docs/operations.md, "Shadow traffic").

proxy (the client's byte pipe to the primary, observed behind it) ·
mirror (the ringkv side, which never waits) · policy (what is mirrored,
derived from ringkv's command table) · compare (judging a pair of replies)
· pair · stats (the one owner of the counts) · report · server (startup,
main loop, shutdown) · command (click).
"""
