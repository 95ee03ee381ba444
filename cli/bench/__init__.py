"""``ringkv bench``: an open-loop load generator for any Redis-protocol
server, with latency measured from each request's intended send time.

    histogram   log-linear latency histogram (µs), mergeable
    keys        key distributions: uniform, zipf:<s>, hot[:<f>]
    workload    the request mix and its pre-encoded RESP bytes
    conn        one connection (asyncio.Protocol + hiredis) and its queues
    stats       what one generator process counts
    share       one process's schedule (open or closed loop) and ticks
    config      what a run is asked to do, split over processes
    driver      runs the processes, prints progress, merges results
    report      the merged outcome: text and JSON
    command     the click command (thin)

docs/benchmarks.md ("ringkv bench") says how to use it and how pipelining
and open loop combine.
"""
