"""Embedding cache keyed by the sha256 of the image bytes: an LRU bounded by entry count.

It lives in the ``EmbeddingStore`` deployment (``serve.store``), one for all ingress replicas; entries hold
Ray ``ObjectRef``s to the embeddings, owned by the store, so evicting an entry frees its object once no
in-flight request still borrows it. Concurrent requests for the same uncached image share one encoder call
(in-flight de-duplication, across ingress replicas); a failed computation is not cached and its error
reaches every waiter.
"""
from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Awaitable, Callable


@dataclass(frozen=True)
class CacheEntry:
    """ref: ObjectRef of the embedding (1,256,S/16,S/16) float32; original_hw (H,W); input_hw resized extent in
    the S frame."""

    ref: Any
    original_hw: tuple[int, int]
    input_hw: tuple[int, int]


class EmbeddingCache:
    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"cache capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._inflight: dict[str, asyncio.Future] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> CacheEntry | None:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
        return entry

    def put(self, key: str, entry: CacheEntry) -> None:
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)

    async def get_or_compute(self, key: str, compute: Callable[[], Awaitable[CacheEntry]]) -> tuple[CacheEntry, bool]:
        """-> (entry, cached). ``cached`` is True when no encoder call was made for this request."""
        entry = self.get(key)
        if entry is not None:
            self.hits += 1
            return entry, True
        pending = self._inflight.get(key)
        if pending is not None:
            self.hits += 1
            return await asyncio.shield(pending), True
        self.misses += 1
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            entry = await compute()
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except Exception as e:
            fut.set_exception(e)
            fut.exception()  # mark retrieved: no "exception never retrieved" log when nobody waited
            raise
        finally:
            self._inflight.pop(key, None)
        self.put(key, entry)
        fut.set_result(entry)
        return entry, False

    def stats(self) -> dict[str, int]:
        return {"size": len(self._entries), "capacity": self.capacity, "hits": self.hits, "misses": self.misses}
