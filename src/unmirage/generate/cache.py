"""A key/value cache that is allocated once and grows by views: `preallocated_cache`.

transformers' two stock caches each waste memory traffic on CPU at every decoding step. The dynamic cache
concatenates each layer's keys and values with the new token (a full copy of the cache per step), and the
static cache attends over its whole pre-allocated length (prompt + max new tokens) from the first step on, so
at batch 32 and 256 new tokens most of its attention reads are of masked-out slots. This cache allocates the
full length once, like the static one, writes each step's keys and values in place, and hands attention a
view of the filled part only, like the dynamic one: no copy, and no reads of empty slots. Its masks and
attention inputs are exactly the dynamic cache's, so greedy outputs equal transformers' default generation.

It serves models whose decoder layers all use full attention (the families this project supports); for
sliding-window or other layer types `preallocated_cache` returns None and the caller uses a stock cache.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, DynamicLayer, get_layer_types_and_kwargs


class PreallocatedLayer(DynamicLayer):
    """One layer's keys and values in a buffer of `capacity` positions; `keys`/`values` view the filled part."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        self.capacity = capacity
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, _length, _dim = key_states.shape
        self.device = key_states.device
        self._key_buffer = key_states.new_empty((batch, heads, self.capacity, key_states.shape[-1]))
        self._value_buffer = value_states.new_empty((batch, heads, self.capacity, value_states.shape[-1]))
        self.keys = self._key_buffer[:, :, :0]
        self.values = self._value_buffer[:, :, :0]
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        assert self._key_buffer is not None and self._value_buffer is not None
        start = self.keys.shape[-2]
        end = start + key_states.shape[-2]
        if end > self.capacity:
            raise RuntimeError(f"preallocated KV cache full ({end} > {self.capacity} positions)")
        self._key_buffer[:, :, start:end] = key_states
        self._value_buffer[:, :, start:end] = value_states
        self.keys = self._key_buffer[:, :, :end]
        self.values = self._value_buffer[:, :, :end]
        return self.keys, self.values

    def reset(self) -> None:
        super().reset()
        self._key_buffer = self._value_buffer = None

    def get_max_length(self) -> int:
        return self.capacity

    def _rebuffer(self, transform: Any) -> None:
        """Apply a batch-dimension transform to both buffers and view the filled part again."""
        if not self.is_initialized or self._key_buffer is None or self._value_buffer is None:
            return
        filled = self.keys.shape[-2]
        self._key_buffer = transform(self._key_buffer)
        self._value_buffer = transform(self._value_buffer)
        self.keys = self._key_buffer[:, :, :filled]
        self.values = self._value_buffer[:, :, :filled]

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._rebuffer(lambda buffer: buffer.repeat_interleave(repeats, dim=0))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._rebuffer(lambda buffer: buffer[indices, ...])

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._rebuffer(lambda buffer: buffer.index_select(0, beam_idx.to(buffer.device)))


def preallocated_cache(model: Any, capacity: int) -> Cache | None:
    """A cache of `capacity` positions per layer for `model`'s decoder, or None if some layer is not plain
    full attention (sliding windows, chunked attention, shared or linear-attention layers)."""
    types, _kwargs = get_layer_types_and_kwargs(model.config.get_text_config(decoder=True))
    if not types or set(types) != {"full_attention"}:
        return None
    return Cache(layers=[PreallocatedLayer(capacity) for _ in types])
