"""Single-producer single-consumer ring of audio blocks, preallocated.

The audio callback pushes (reference, error, speaker, meta) blocks; the worker thread drains
them. The producer never waits and never allocates: when the worker falls behind and the
ring is full, the block is dropped and counted. Counters are plain integers updated under
the GIL after the copies, which orders them after the data for the consumer.
"""

from __future__ import annotations

import numpy as np

META_FIELDS = 4  # callback start time (s), duration of the previous callback (s), status flags, stream number


class BlockRing:
    def __init__(self, capacity_blocks: int, block_size: int):
        if capacity_blocks < 2:
            raise ValueError("capacity_blocks must be at least 2")
        self.capacity = capacity_blocks
        self.block_size = block_size
        self.reference = np.zeros((capacity_blocks, block_size))
        self.error = np.zeros((capacity_blocks, block_size))
        self.output = np.zeros((capacity_blocks, block_size))
        self.meta = np.zeros((capacity_blocks, META_FIELDS))
        self.written = 0
        self.read = 0
        self.dropped = 0

    # producer side (audio callback)
    def push(self, reference: np.ndarray, error: np.ndarray, output: np.ndarray, meta: np.ndarray) -> None:
        if self.written - self.read >= self.capacity:
            self.dropped += 1
            return
        slot = self.written % self.capacity
        self.reference[slot] = reference
        self.error[slot] = error
        self.output[slot] = output
        self.meta[slot] = meta
        self.written += 1

    def push_blocks(self, reference: np.ndarray, error: np.ndarray, output: np.ndarray, meta: np.ndarray) -> None:
        """`push` for each of several consecutive blocks (flattened samples, one meta row per
        block), in at most two copies per array: what fits is kept, the rest dropped and counted."""
        count = meta.shape[0]
        kept = max(0, min(count, self.capacity - (self.written - self.read)))
        self.dropped += count - kept
        block = self.block_size
        done = 0
        while done < kept:
            slot = (self.written + done) % self.capacity
            run = min(kept - done, self.capacity - slot)
            samples = slice(done * block, (done + run) * block)
            self.reference[slot:slot + run] = reference[samples].reshape(run, block)
            self.error[slot:slot + run] = error[samples].reshape(run, block)
            self.output[slot:slot + run] = output[samples].reshape(run, block)
            self.meta[slot:slot + run] = meta[done:done + run]
            done += run
        self.written += kept

    # consumer side (worker)
    def available(self) -> int:
        return self.written - self.read

    def take(self, max_blocks: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Copy out the oldest available blocks (flattened samples, and meta rows) and free them."""
        count = self.available()
        if max_blocks is not None:
            count = min(count, max_blocks)
        slots = (self.read + np.arange(count)) % self.capacity
        taken = (self.reference[slots].ravel(), self.error[slots].ravel(), self.output[slots].ravel(), self.meta[slots])
        self.read += count
        return taken
