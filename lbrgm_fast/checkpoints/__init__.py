"""Reading StyleGAN2 generator checkpoints safely, and lbrgm-fast's own checkpoint format.

Supported inputs (recognised by content, never by file name): NVIDIA network pickles
(stylegan2-ada-pytorch; StyleGAN2 from the stylegan3 repository), rosinality/stylegan2-pytorch
`.pt` files, original TensorFlow StyleGAN2 pickles, and lbrgm files (safetensors + metadata).
Nothing in a checkpoint is ever executed.
"""

from lbrgm_fast.checkpoints.checkpoint import FORMATS, Checkpoint
from lbrgm_fast.checkpoints.layout import expected_shapes
from lbrgm_fast.checkpoints.lbrgm_format import save_lbrgm
from lbrgm_fast.checkpoints.reader import convert, load_generator, read_checkpoint

__all__ = [
    "FORMATS",
    "Checkpoint",
    "convert",
    "expected_shapes",
    "load_generator",
    "read_checkpoint",
    "save_lbrgm",
]
