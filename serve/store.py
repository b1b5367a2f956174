"""``EmbeddingStore``: the embeddings of every ingress replica, in Ray's object store.

One replica (its state is the cache) holds an LRU of ``ObjectRef``s (:class:`serve.cache.EmbeddingCache`)
that it owns: it calls the encoder itself and ``ray.put``s the result, so an embedding outlives the ingress
replica that asked for it and the encoder replica that computed it. Ingress replicas ask it by
``embedding_id`` and pass the ref (a few hundred bytes) on to the decoder, which reads the 4 MB array from
the object store (zero-copy on the same node) and keeps a few recent ones locally. If this replica dies,
Serve starts a new, empty one: later ``embedding_id`` calls answer 404 ("POST the image again").
"""
from __future__ import annotations

from typing import Any

import numpy as np
import ray
from ray import serve
from ray.serve.handle import DeploymentHandle

from .cache import CacheEntry, EmbeddingCache


def entry_dict(entry: CacheEntry) -> dict[str, Any]:
    """What callers get: the ref boxed in a list (a bare top-level ref in a reply would be resolved)."""
    return {"ref": [entry.ref], "original_hw": entry.original_hw, "input_hw": entry.input_hw}


@serve.deployment(name="EmbeddingStore")
class EmbeddingStore:
    def __init__(self, capacity: int, encoder: DeploymentHandle) -> None:
        self.cache = EmbeddingCache(capacity)
        self.encoder = encoder

    async def lookup(self, key: str) -> dict[str, Any] | None:
        """{"ref": [ObjectRef], "original_hw", "input_hw"} of a stored embedding (counted as a hit), or None."""
        entry = self.cache.get(key)
        if entry is not None:
            self.cache.hits += 1
            return entry_dict(entry)
        return None

    async def embed(self, key: str, image: list) -> tuple[dict[str, Any], bool]:
        """``image``: [ObjectRef of uint8 (H,W,3)] (boxed: the ref travels, not the pixels). Encodes once per key,
        also when several ingress replicas ask at once -> (entry dict, cached)."""

        async def compute() -> CacheEntry:
            out = await self.encoder.encode.remote(image[0])  # a top-level ref: the encoder reads the pixels
            ref = ray.put(np.ascontiguousarray(out["embedding"], np.float32))  # owned by this replica
            return CacheEntry(ref, tuple(out["original_hw"]), tuple(out["input_hw"]))

        entry, cached = await self.cache.get_or_compute(key, compute)
        return entry_dict(entry), cached

    def stats(self) -> dict[str, int]:
        return self.cache.stats()
