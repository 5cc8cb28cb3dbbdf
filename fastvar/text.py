"""A character-level language-model dataset that needs no download: the help topics that ship with
Python (pydoc_data.topics, about 465,000 characters of English), in fixed windows.

Characters map to a fixed vocabulary (0: any character outside it, 1: newline, 2..96: printable
ASCII), so it does not depend on the text. The text is the topics joined in key order; the last tenth
is the test set. Each example is a window of LENGTH characters and its targets the next character at
each position; windows do not overlap. Another Python release ships other text: its test targets
differ, and a results folder made with the other refuses it.
"""
import numpy as np

LENGTH = 64
TEST_FRACTION = 0.1
PRINTABLE = "".join(map(chr, range(32, 127)))
VOCABULARY = 2 + len(PRINTABLE)  # unknown, newline, printable ASCII
NAME = "pydoc-chars"


def encode(text):
    """Characters → token ids in the fixed vocabulary."""
    codes = np.fromiter(map(ord, text), dtype=np.int64, count=len(text))
    tokens = np.where((codes >= 32) & (codes < 127), codes - 30, 0)
    tokens[codes == ord("\n")] = 1
    return tokens


def decode(tokens):
    return "".join("\n" if t == 1 else PRINTABLE[t - 2] if t >= 2 else "\N{REPLACEMENT CHARACTER}" for t in tokens)


def pydoc_text():
    from pydoc_data.topics import topics
    return "\n".join(topics[key] for key in sorted(topics))


def windows(tokens, length=LENGTH):
    """Non-overlapping windows (N×length) and their next-token targets, from the start of `tokens`."""
    n = (len(tokens) - 1) // length
    x = tokens[:n * length].reshape(n, length)
    y = tokens[1:n * length + 1].reshape(n, length)
    return x, y


def pydoc_arrays():
    """x_train, y_train, x_test, y_test of the built-in character dataset."""
    tokens = encode(pydoc_text())
    cut = int(len(tokens) * (1 - TEST_FRACTION))
    (x_train, y_train), (x_test, y_test) = windows(tokens[:cut]), windows(tokens[cut:])
    return {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
