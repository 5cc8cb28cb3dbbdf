"""A training step (forward, backward, optimizer update) replayed as one CUDA graph.

The step reads nothing from the host (fastvar.engine.optim keeps its step counter, schedule and bias
corrections on the device; BatchNorm updates its running statistics in place), so a capture of it
replays every later step of the same shapes: one launch instead of hundreds. The first WARMUP calls
of each input shape run eagerly on a side stream (allocator, cuDNN and compile warm-up, as capture
requires); the next is captured, then replayed, and every later one copies its inputs into the
captured ones and replays. A capture records kernels without running them, so Python-side state
changes only at capture: what the step computes must live in tensors, as it does here. A capture
that fails says so in one line, naming its first cause, and leaves that shape eager: the same step,
launched op by op. `ran_as_graph` says whether every shape was captured (what a row records).
"""
import sys

import torch

from ..errors import first_line

WARMUP = 3


class GraphedStep:
    def __init__(self, step):
        """step(*tensors) → a tuple of tensors; None may stand for a tensor it does not take."""
        self.step, self.calls, self.graphs, self.eager = step, {}, {}, set()

    def __call__(self, *inputs):
        key = tuple(None if t is None else (t.shape, t.dtype) for t in inputs)
        if key in self.graphs:
            graph, static_inputs, outputs = self.graphs[key]
            for static, t in zip(static_inputs, inputs):
                if t is not None:
                    static.copy_(t)
            graph.replay()
            return outputs  # overwritten by the next replay: read before the next call
        self.calls[key] = self.calls.get(key, 0) + 1
        if self.calls[key] <= WARMUP or key in self.eager:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                outputs = self.step(*inputs)
            torch.cuda.current_stream().wait_stream(side)
            return outputs
        static_inputs = [None if t is None else t.clone() for t in inputs]
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                outputs = self.step(*static_inputs)
        except RuntimeError as e:  # nothing ran: the step is run eagerly instead, now and for this shape
            print(f"fastvar: the training step could not be captured as a CUDA graph ({first_line(first_cause(e))}); "
                  "it runs without one", file=sys.stderr)
            self.eager.add(key)
            return self(*inputs)
        self.graphs[key] = (graph, static_inputs, outputs)
        graph.replay()  # the capture ran nothing: this is the step
        return outputs

    @property
    def ran_as_graph(self):
        """True once a shape is captured, while none has fallen back to eager."""
        return bool(self.graphs) and not self.eager


def first_cause(error):
    """The exception that started a chain: a failed capture raises again as the capture ends, and the
    later error ("operation failed due to a previous error during capture") hides the cause."""
    while (error.__cause__ or error.__context__) is not None:
        error = error.__cause__ or error.__context__
    return error

