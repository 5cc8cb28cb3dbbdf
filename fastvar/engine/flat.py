"""Each replica's trained parameters as one flat vector: a stack of M replicas is one [M, P] buffer,
and every tensor a layer reads is a view of it. The optimizer then makes one pass over one buffer
(and its gradient, and its state) instead of one per parameter, and a training step differentiates
with respect to the buffer itself: `torch.split` hands out the layers' tensors, and its backward
writes their gradients side by side into one [M, P] gradient.

The entries the mixed-precision casts lower (convolutions' and linear layers') come first, so the
low-precision copy of the weights is one slice, [..., :lowered]. Among each, one-dimensional tensors
come last, so that a per-shape learning-rate factor covers a few spans of the buffer.
"""
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Entry:
    name: str
    start: int
    shape: tuple  # as the layers read it
    order: tuple | None  # its dimensions in memory, outermost first (None: as they are)

    @property
    def size(self):
        return math.prod(self.shape)

    @property
    def memory_shape(self):
        return self.shape if self.order is None else tuple(self.shape[d] for d in self.order)

    def view(self, chunk):
        """The tensor shaped as the layers read it, from its stretch of a flat [..., size] buffer."""
        lead = chunk.shape[:-1]
        memory = chunk.view(*lead, *self.memory_shape)
        if self.order is None:
            return memory
        return memory.permute(*range(len(lead)), *(len(lead) + self.order.index(d) for d in range(len(self.order))))


ALIGN = 16  # elements: every entry of every replica starts 64 bytes aligned, as a fresh tensor would


def aligned(n):
    return -(-n // ALIGN) * ALIGN


class FlatLayout:
    def __init__(self, shapes, orders=None, lowered=frozenset()):
        """shapes: {name: shape of one replica's tensor}, in the model's order; orders: {name: memory
        order} for the tensors a layer reads in another memory order; lowered: the names the
        mixed-precision casts lower. Each entry starts at a multiple of ALIGN elements, and so does
        each replica's row: a CPU kernel may round by its operand's alignment, and a replica's result
        must not depend on its place in the stack."""
        orders = orders or {}
        placed = sorted(shapes, key=lambda n: (n not in lowered, len(shapes[n]) == 1))
        self.entries, start, self.lowered = {}, 0, None
        for name in placed:
            if name not in lowered and self.lowered is None:
                self.lowered = start
            self.entries[name] = Entry(name, start, tuple(shapes[name]), orders.get(name))
            start = aligned(start + self.entries[name].size)
        self.size = start
        self.lowered = start if self.lowered is None else self.lowered
        self.names = tuple(shapes)  # the model's order, for the views' dicts

    def views(self, *parts):
        """{name: tensor} of a flat buffer [..., P], or of two buffers side by side, [..., lowered]
        (the lowered entries, in the compute dtype) and [..., P - lowered]. Differentiable: a split."""
        bounds = [0, self.size] if len(parts) == 1 else [0, self.lowered, self.size]
        by_name = {}
        for part, low, high in zip(parts, bounds, bounds[1:]):
            inside = [e for e in self.entries.values() if low <= e.start < high]
            edges = [low] + [x for e in inside for x in (e.start, e.start + e.size)] + [high]
            chunks = part.split([b - a for a, b in zip(edges, edges[1:])], dim=-1)
            by_name.update({e.name: e.view(c) for e, c in zip(inside, chunks[1::2])})
        return {n: by_name[n] for n in self.names}

    def spans(self, key):
        """[(start, stop, value)]: the buffer cut into maximal spans of entries with equal key(name)
        (the alignment gaps with the entry before them), never across the end of the lowered entries."""
        ordered = list(self.entries.values())
        ends = [e.start for e in ordered[1:]] + [self.size]
        spans = []
        for e, end in zip(ordered, ends):
            value = key(e.name)
            if spans and spans[-1][2] == value and e.start != self.lowered:
                spans[-1] = (spans[-1][0], end, value)
            else:
                spans.append((e.start, end, value))
        return spans
