"""Growing past one process: channel gateways and stateless workers over Redis Streams.

``bots gateway`` holds the platform connections, records each message in the inbox (as ``bots
run`` does), then publishes it to the shard stream of its chat; ``bots worker`` processes own shard
streams through leases, run the pipeline and hand the replies (recorded in the outbox first) back to
the gateway that holds the channel, over that channel's outbound stream. See README "Growing past one
machine". Imports only :mod:`bots.core` and redis; the wiring lives in :mod:`bots.assembly`.
"""
