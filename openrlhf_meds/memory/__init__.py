"""The MEDS error memory as a Ray service (docs/memory-service.md).

- `client.py`: `MemoryClient`, which starts the shards and routes groups to them (picklable).
- `routing.py`: `shard_of`, `new_group_id`, `shard_of_group`: the stable key-to-shard routing,
  without Ray.
- `actor.py`: `MemoryActor`, one shard as a Ray actor: RPC, the worker queue, statistics.
- `wal.py`: a shard's state on disk, without Ray: write-ahead log, recovery snapshots,
  replay after a crash, and the training snapshots' manifest.
"""

__all__ = ["MemoryClient"]


def __getattr__(name: str):
    # Lazy, so that importing wal.py (no Ray) does not import Ray through this package.
    if name == "MemoryClient":
        from .client import MemoryClient

        return MemoryClient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
