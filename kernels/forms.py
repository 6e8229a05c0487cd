"""Which of a kernel's equal forms to trace.

Two ops here have two forms that compute the same thing: one built on a single convolution
(cuDNN / oneDNN), best when torch runs op by op, and one that suits torch.compile better: the
FIR filter as element-wise shifted slices, which Inductor fuses with its neighbours, backward
included, and ToRGB's modulated 1x1 convolution as a batched matrix product with the style
folded into its weight. `compiler_forms()` says which one to trace.

Graphs exported for ONNX Runtime and TensorRT want the convolution forms (one convolution node
runs better there than a chain of small ones, and these runtimes fuse around convolutions
themselves), so the exporter traces under `convolution_forms()`. The flag is ours rather than
`torch.compiler.is_exporting()`, which some torch versions also answer True under torch.compile.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

_convolutions_only = False


def compiler_forms() -> bool:
    """True while torch.compile (or torch.export) traces the caller, outside `convolution_forms`:
    the caller should then take its compiler form."""
    return torch.compiler.is_compiling() and not _convolutions_only


@contextlib.contextmanager
def convolution_forms() -> Iterator[None]:
    """Trace the convolution forms even under a compiler (used around ONNX export).

    The flag is process-wide (a plain global, which Dynamo reads and guards like any other):
    a torch.compile trace on another thread while an export runs would get these forms too.
    """
    global _convolutions_only
    previous, _convolutions_only = _convolutions_only, True
    try:
        yield
    finally:
        _convolutions_only = previous
