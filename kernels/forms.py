"""Which of a kernel's equal forms to run.

Some ops here have two forms that compute the same thing: one built on a single convolution
(cuDNN / oneDNN), best when torch runs op by op, and one that suits torch.compile better: the
FIR filter as element-wise shifted slices, which Inductor fuses with its neighbours, backward
included, and ToRGB's modulated 1x1 convolution as a batched matrix product with the style
folded into its weight. `fusing_compiler()` says which one to trace.

Graphs exported for ONNX Runtime and TensorRT want the convolution forms (one convolution node
runs better there than a chain of small ones, and these runtimes fuse around convolutions
themselves), so the exporter traces under `library_kernel_forms()`. The flag is ours rather than `torch.compiler.is_exporting()`, which
torch.compile itself answered True in torch 2.11 (seen on the GPU machine: the compiled step
kept the convolution forms).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

_library_forms_only = False


def fusing_compiler() -> bool:
    """True while torch.compile (or torch.export) traces the caller, outside `library_kernel_forms`."""
    return torch.compiler.is_compiling() and not _library_forms_only


@contextlib.contextmanager
def library_kernel_forms() -> Iterator[None]:
    """Trace the library-kernel forms even under a compiler (used around ONNX export).

    The flag is process-wide (a plain global, which Dynamo reads and guards like any other):
    a torch.compile trace on another thread while an export runs would get these forms too.
    """
    global _library_forms_only
    previous, _library_forms_only = _library_forms_only, True
    try:
        yield
    finally:
        _library_forms_only = previous
