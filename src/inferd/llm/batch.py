"""The running batch's KV cache: one Hugging Face `DynamicCache` whose rows are sequences.

Sequences of different lengths share the cache by left-padding: every row ends at the same
column, so one decode step appends one column for all of them, and the attention mask hides
each row's padding. Rows join (after their own prefill) and leave (finished or aborted) between
steps; only then are the tensors re-laid, not on every step.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import torch
import torch.nn.functional as F


class BatchCache:
    """Per-sequence KV caches stacked into one left-padded batch."""

    def __init__(self) -> None:
        #: The DynamicCache the model reads and appends to; None while the batch is empty.
        self.cache: Any | None = None
        #: Request id of each row, in row order.
        self.ids: list[str] = []
        #: Padding columns at the start of each row.
        self.pads: list[int] = []

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def width(self) -> int:
        """Columns per row (the longest row's cached length)."""
        return 0 if self.cache is None else int(self.cache.get_seq_length())

    def lengths(self) -> list[int]:
        """Cached tokens per row (without padding)."""
        w = self.width
        return [w - pad for pad in self.pads]

    def add(self, ids: list[str], cache: Any) -> None:
        """Append rows from a prefill of equal-length prompts (`cache` holds them unpadded)."""
        if self.cache is None:
            self.cache, self.ids, self.pads = cache, list(ids), [0] * len(ids)
            return
        old, new = self.width, int(cache.get_seq_length())
        width = max(old, new)
        for mine, theirs in zip(_layers(self.cache), _layers(cache), strict=True):
            mine.keys = torch.cat(
                [_pad_left(mine.keys, width - old), _pad_left(theirs.keys, width - new)]
            )
            mine.values = torch.cat(
                [_pad_left(mine.values, width - old), _pad_left(theirs.values, width - new)]
            )
        self.pads = [pad + width - old for pad in self.pads] + [width - new] * len(ids)
        self.ids.extend(ids)

    def remove(self, ids: Collection[str]) -> None:
        """Drop these rows and the padding columns nobody needs any more."""
        if not ids or self.cache is None:
            return
        keep = [i for i, rid in enumerate(self.ids) if rid not in ids]
        if len(keep) == len(self.ids):
            return
        if not keep:
            self.clear()
            return
        self.ids = [self.ids[i] for i in keep]
        pads = [self.pads[i] for i in keep]
        trim = min(pads)
        index = torch.tensor(keep, dtype=torch.long, device=_device(self.cache))
        for layer in _layers(self.cache):
            # A fresh tensor, not a view: the next decode step concatenates onto it anyway.
            layer.keys = layer.keys.index_select(0, index)[:, :, trim:, :]
            layer.values = layer.values.index_select(0, index)[:, :, trim:, :]
        self.pads = [pad - trim for pad in pads]

    def clear(self) -> None:
        self.cache, self.ids, self.pads = None, [], []

    def decode_inputs(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Attention mask ([rows, width + 1]) and position ids ([rows, 1]) for one decode step."""
        width = self.width
        cols = torch.arange(width + 1, device=device)
        pads = torch.tensor(self.pads, dtype=torch.long, device=device)
        mask = (cols.unsqueeze(0) >= pads.unsqueeze(1)).to(torch.long)
        positions = (width - pads).unsqueeze(1)
        return mask, positions


def check_cache_layout(cache: Any) -> str | None:
    """Why this model's cache cannot be batched this way, or None when it can.

    The batch re-lays each layer's `keys` / `values` ([batch, heads, seq, dim]); caches that
    are windowed, quantised or hold recurrent state are laid out otherwise.
    """
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if not layers:
        return "the model returned no per-layer KV cache"
    for layer in layers:
        if type(layer) is not DynamicLayer:
            return f"cache layer {type(layer).__name__} is not a plain DynamicLayer"
        keys = getattr(layer, "keys", None)
        if keys is None or keys.dim() != 4:
            return "cache layers do not hold [batch, heads, seq, dim] keys"
    return None


def _layers(cache: Any) -> list[Any]:
    return list(cache.layers)


def select_rows(cache: Any, rows: list[int]) -> None:
    """Keep only these batch rows of a cache (sequences that finished at their prefill go)."""
    index = torch.tensor(rows, dtype=torch.long, device=_device(cache))
    for layer in _layers(cache):
        layer.keys = layer.keys.index_select(0, index)
        layer.values = layer.values.index_select(0, index)


def _device(cache: Any) -> torch.device:
    device: torch.device = _layers(cache)[0].keys.device
    return device


def _pad_left(t: torch.Tensor, n: int) -> torch.Tensor:
    # Zeros in the padding are never read: the attention mask hides those columns.
    return F.pad(t, (0, 0, n, 0)) if n else t
