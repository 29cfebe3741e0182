"""Which shard holds what, without Ray: the stable key-to-shard hash and group ids.

A prompt key lives on shard `shard_of(key, K)`, and a group id carries its shard in its low
`SHARD_BITS` bits (`new_group_id`), so anyone holding the id reaches the shard with
`shard_of_group`. The client and the actor both route with these.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Hashable

from ..meds.config import MAX_SHARDS

SHARD_BITS = (MAX_SHARDS - 1).bit_length()


def shard_of(prompt_key: Hashable, num_shards: int) -> int:
    """The shard holding `prompt_key` (stable across processes and runs, unlike hash())."""
    digest = hashlib.blake2b(f"{type(prompt_key).__name__}:{prompt_key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % num_shards


def new_group_id(prompt_key: Hashable, num_shards: int) -> int:
    """A fresh group id (a non-negative int64) that routes to the key's shard."""
    return (secrets.randbits(62 - SHARD_BITS) << SHARD_BITS) | shard_of(prompt_key, num_shards)


def shard_of_group(group_id: int) -> int:
    """The shard a group id routes to."""
    return int(group_id) & (MAX_SHARDS - 1)
