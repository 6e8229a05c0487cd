"""lbrgm-fast: image restoration by StyleGAN2 inversion with L-BRGM (Conmy, Mukherjee, Schönlieb 2021).

The public API, for pipelines that embed the method:

    from lbrgm_fast import Reconstructor, Inpainting
    rec = Reconstructor.from_checkpoint("ffhq.pkl", device="cuda")   # or an engine plan
    result = rec.run(observation, Inpainting.from_preset("eyes", rec.generator.img_resolution))

To read the method: objective.py (J), loop.py (start, Adam step, keep the best).
"""

__version__ = "0.1.0"

from lbrgm_fast.checkpoints import load_generator, read_checkpoint
from lbrgm_fast.config import GeneratorConfig
from lbrgm_fast.errors import UserError
from lbrgm_fast.methods import MethodSettings, method_settings
from lbrgm_fast.model import Generator
from lbrgm_fast.operators import Identity, Inpainting, SuperResolution
from lbrgm_fast.perceptual import LpipsAlex, VGG16Features
from lbrgm_fast.reconstruct import ReconstructionResult, Reconstructor

__all__ = [
    "Generator",
    "GeneratorConfig",
    "Identity",
    "Inpainting",
    "LpipsAlex",
    "MethodSettings",
    "ReconstructionResult",
    "Reconstructor",
    "SuperResolution",
    "UserError",
    "VGG16Features",
    "__version__",
    "load_generator",
    "method_settings",
    "read_checkpoint",
]
