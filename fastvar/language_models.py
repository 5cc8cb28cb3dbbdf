"""The built-in character-level language models: a small causal transformer and a small GRU. Both take
B×T int64 tokens and give B×T×vocabulary logits, and are written from ops that vmap has rules for
(attention as matrix products, the GRU as nn.GRUCell stepped through time: nn.GRU's fused op has none,
and runs under vmap only decomposed, fastvar.engine.replicas.decomposed_forward; the cell keeps the
stored runs' numbers as they were).
"""
import math

import torch
from torch import nn

MAX_LENGTH = 64  # positions the transformer learns an embedding for (fastvar.text.LENGTH)


class CausalSelfAttention(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(width, 3 * width), nn.Linear(width, width)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        future = torch.ones(t, t, dtype=torch.bool, device=x.device).triu(1)
        attended = scores.masked_fill(future, float("-inf")).softmax(-1) @ v
        return self.proj(attended.transpose(1, 2).reshape(b, t, -1))


class Block(nn.Module):
    """Pre-norm: attention, then a 4× GELU feed-forward, each dropped out and added to its input."""

    def __init__(self, width, heads, dropout):
        super().__init__()
        self.norm1, self.attention = nn.LayerNorm(width), CausalSelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x):
        x = x + self.drop1(self.attention(self.norm1(x)))
        return x + self.drop2(self.mlp(self.norm2(x)))


class CharTransformer(nn.Module):
    """A GPT-style decoder: token and learned position embeddings, `layers` blocks with residual
    dropout (the dropout source), a final norm; `heads` attention heads, or the most of 2 and 1 that
    divide a width they do not."""

    def __init__(self, vocabulary, width=64, layers=2, heads=4, max_length=MAX_LENGTH, dropout=0.1):
        super().__init__()
        heads = next(h for h in (heads, 2, 1) if width % h == 0)
        self.embed, self.position = nn.Embedding(vocabulary, width), nn.Embedding(max_length, width)
        self.blocks = nn.Sequential(*[Block(width, heads, dropout) for _ in range(layers)])
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, vocabulary)

    def forward(self, tokens):
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return self.head(self.norm(self.blocks(self.embed(tokens) + self.position(positions))))


class CharGRU(nn.Module):
    """An embedding, one GRU layer of `width` units (nn.GRUCell through time), dropout (the dropout
    source) and a linear read-out."""

    def __init__(self, vocabulary, width=128, dropout=0.1):
        super().__init__()
        self.embed, self.cell = nn.Embedding(vocabulary, width), nn.GRUCell(width, width)
        self.drop, self.head = nn.Dropout(dropout), nn.Linear(width, vocabulary)

    def forward(self, tokens):
        x = self.embed(tokens)
        state, states = x.new_zeros(x.shape[0], self.cell.hidden_size), []
        for t in range(x.shape[1]):
            state = self.cell(x[:, t], state)
            states.append(state)
        return self.head(self.drop(torch.stack(states, 1)))
