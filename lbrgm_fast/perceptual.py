"""Perceptual features φ (LPIPS-VGG v0.1 in plain torch) and the LPIPS(alex) monitor.

`VGG16Features` is the network behind NVIDIA's `vgg16.pt` that BRGM and L-BRGM use, rebuilt from
its published definition (REFERENCE §4): torchvision's VGG16 conv stack, the LPIPS input scaling,
channel-unit-normalised taps after relu1_2 … relu5_3, each channel weighted by LPIPS's
non-negative "lin" weights. It has no custom ops and no data-dependent control flow, so it
compiles with torch.compile and exports with torch.export / ONNX.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import skip_init

from lbrgm_fast.errors import UserError, WeightsNotFoundError

if TYPE_CHECKING:
    from lbrgm_fast.weights import Backbone

__all__ = ["LpipsAlex", "VGG16Features", "lpips_lin_weights"]

# torchvision `vgg16().features` up to relu5_3 (index 29): out-channels of each conv ("M" = the
# 2x2 max-pool between stages). Indices follow torchvision so state dict keys load unchanged.
_VGG16_CFG: list[int | str] = [
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512,
]
# Index of the ReLU after which each LPIPS tap is taken: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3.
_VGG16_TAPS = (3, 8, 15, 22, 29)
_VGG16_CONVS = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)

# LPIPS v0.1 ScalingLayer (lpips/lpips.py): x in [-1, 1] -> (x - shift) / scale. These literals
# are the full precision of lpips's source; as float32 buffers they match its buffers bit for bit.
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)
_EPS = 1e-10  # lpips.normalize_tensor: f / (||f||_2 + eps)

# torchvision AlexNet `features` index -> lpips.pretrained_networks.alexnet slice holding it.
_ALEX_CONV_SLICE = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}


def lpips_lin_weights(net: str) -> list[Tensor]:
    """The LPIPS v0.1 per-channel lin weights for `net` ('vgg' or 'alex'), each [C] float32.

    They ship inside the lpips package (`lpips/weights/v0.1/{net}.pth`, keys
    `lin{k}.model.1.weight` of shape [1, C, 1, 1]), so they never need a download.
    """
    import lpips

    path = Path(lpips.__file__).parent / "weights" / "v0.1" / f"{net}.pth"
    if not path.is_file():
        raise WeightsNotFoundError(
            f"LPIPS lin weights missing from the lpips package: {path}; reinstall lpips"
        )
    # map_location: the shipped file was saved from CUDA tensors.
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return [sd[f"lin{k}.model.1.weight"].reshape(-1).float() for k in range(5)]


def _tap_sizes(resolution: int) -> list[int]:
    """Spatial side of each VGG16 tap for a resolution x resolution input (pools floor)."""
    return [resolution >> k for k in range(5)]


def _split_torchvision_features(sd: Mapping[str, object]) -> dict[str, object]:
    """The `features.*` part of a torchvision VGG16/AlexNet state dict, keyed without prefix.

    Accepts a whole model state dict (classifier.* and other keys are ignored) or just the
    `features` sub-module's (keys '0.weight', … or 'features.0.weight', …).
    """
    if not isinstance(sd, Mapping):
        raise UserError(
            f"expected a state dict (a mapping of names to tensors), got {type(sd).__name__}"
        )
    keys = [k for k in sd if isinstance(k, str)]
    if any(k.startswith("features.") for k in keys):
        return {k[len("features.") :]: sd[k] for k in keys if k.startswith("features.")}
    return {k: sd[k] for k in keys if k.split(".")[0].isdigit()}


def _random_init(convs: list[nn.Conv2d], seed: int) -> None:
    """Seeded Kaiming-normal (fan-out, ReLU gain) weights and zero biases, torchvision's init for
    these convs; a private generator, so the global RNG is untouched."""
    gen = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for conv in convs:
            fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
            std = (2.0 / fan_out) ** 0.5
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * std)
            conv.bias.zero_()


def _load_convs(target: Mapping[int, nn.Conv2d], sd: Mapping[str, object], net_name: str) -> None:
    """Copy torchvision `features.{i}.weight/bias` into the convs `target[i]`.

    A missing key, a non-tensor or a wrong shape raises UserError naming the key.
    """
    feats = _split_torchvision_features(sd)
    for idx, conv in target.items():
        for part in ("weight", "bias"):
            key = f"features.{idx}.{part}"
            value = feats.get(f"{idx}.{part}")
            expected = getattr(conv, part).shape
            if value is None:
                raise UserError(
                    f"{net_name} state dict has no {key!r}; expected torchvision's {net_name} "
                    "(without batch norm)"
                )
            if not isinstance(value, Tensor) or value.shape != expected:
                got = list(value.shape) if isinstance(value, Tensor) else type(value).__name__
                raise UserError(
                    f"{net_name} state dict key {key!r} is {got}, expected {list(expected)}"
                )
            with torch.no_grad():
                getattr(conv, part).copy_(value.to(torch.float32))



def _warned(loaded: Backbone) -> dict[str, Tensor]:
    """`loaded`'s weights, warning (once per call site) when they are not the official file."""
    if loaded.note is not None:
        warnings.warn(loaded.note, UserWarning, stacklevel=3)
    return loaded.state_dict

class VGG16Features(nn.Module):
    """φ: LPIPS-VGG v0.1 features whose squared distance is LPIPS-VGG, calibrated as NVIDIA's.

    Input: images [B, 3, H, W] in [-1, 1] (any square size; area-resized to `resolution`,
    upsizing too, as NVIDIA's projector does for low-resolution observations).

    `features(x)` returns the five taps, each channel-unit-normalised and multiplied by
    sqrt(lin_c / (H_l·W_l)), in float32. Flattened and concatenated they are NVIDIA's vector
    of length D = Σ_l C_l·H_l·W_l (`num_elements`; 7,995,392 at 256x256), and the squared
    Euclidean distance between two such vectors is LPIPS-VGG (`distance`).

    Calibration (REFERENCE §4): BRGM and L-BRGM weight the *mean* of squared differences over
    that vector, i.e. λvgg · LPIPS_vgg / D. `perceptual_loss` returns exactly LPIPS_vgg / D per
    sample, so the published λvgg (1e7 BRGM, 2e7 L-BRGM) keep their meaning. With plain
    LPIPS the published λ would be ~8e6 times too strong.

    Mixed precision: under autocast the convolutions may run in bf16/fp16, but normalisation
    and distances are an explicit float32 island (autocast disabled, inputs upcast), as the
    squared norm of a 512-channel tap can overflow in fp16 and loses precision in bf16.

    Build it with `pretrained`, `from_torchvision_state_dict` or `random`; the bare
    constructor leaves an all-zero backbone.

    Args:
        resolution: Side length the input is resized to (256 as in NVIDIA's code).
    """

    shift: Tensor
    scale: Tensor

    def __init__(self, resolution: int = 256) -> None:
        super().__init__()
        if not isinstance(resolution, int) or resolution < 16:
            raise UserError(f"VGG16 feature resolution must be an integer >= 16, got {resolution!r}")
        self.resolution = resolution
        layers: list[nn.Module] = []
        in_ch = 3
        for item in _VGG16_CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                # skip_init + zero: Kaiming init of 14.7 M weights costs ~0.3 s and is always
                # overwritten by a constructor below; a bare module is an obvious all-zero φ.
                conv = skip_init(nn.Conv2d, in_ch, int(item), kernel_size=3, padding=1)
                with torch.no_grad():
                    conv.weight.zero_()
                    conv.bias.zero_()
                layers += [conv, nn.ReLU(inplace=False)]
                in_ch = int(item)
        # Indices match torchvision's `features`: layers.N <-> features.N.
        self.layers = nn.Sequential(*layers)
        shift = torch.tensor(_LPIPS_SHIFT, dtype=torch.float32).view(1, 3, 1, 1)
        scale = torch.tensor(_LPIPS_SCALE, dtype=torch.float32).view(1, 3, 1, 1)
        self.register_buffer("shift", shift, persistent=False)
        self.register_buffer("scale", scale, persistent=False)
        # sqrt(lin_c / (H_l W_l)) per tap, [1, C, 1, 1]: folds LPIPS's spatial mean and lin
        # weighting into the features so one sum of squares gives LPIPS. Non-persistent: they
        # come from the lpips package, so state_dict() holds only the conv weights (layers.N.*).
        self.channels = [64, 128, 256, 512, 512]
        self.tap_sizes = _tap_sizes(resolution)
        for k, (lin, side) in enumerate(zip(lpips_lin_weights("vgg"), self.tap_sizes)):
            if lin.numel() != self.channels[k] or (lin < 0).any():
                raise WeightsNotFoundError(f"lpips vgg lin{k} weights are malformed; reinstall lpips")
            tap_scale = (lin / (side * side)).sqrt().view(1, -1, 1, 1)
            self.register_buffer(f"tap_scale{k}", tap_scale, persistent=False)
        self.requires_grad_(False)
        self.eval()

    @property
    def num_elements(self) -> int:
        """D = Σ_l C_l·H_l·W_l, the length of NVIDIA's flattened feature vector."""
        return sum(c * s * s for c, s in zip(self.channels, self.tap_sizes))

    # -- construction ----------------------------------------------------------------------------

    @classmethod
    def from_torchvision_state_dict(
        cls, sd: Mapping[str, object], resolution: int = 256
    ) -> VGG16Features:
        """Load torchvision VGG16 weights (`vgg16-397923af.pth`): the whole model's state dict
        (classifier keys ignored) or only its `features.*` tensors. A missing or mis-shaped
        key raises UserError naming it."""
        model = cls(resolution)
        convs = {i: model.layers[i] for i in _VGG16_CONVS}
        _load_convs(convs, sd, "VGG16")
        return model

    @classmethod
    def random(cls, seed: int, resolution: int = 256) -> VGG16Features:
        """A backbone with seeded random weights (torchvision's init: Kaiming-normal fan-out,
        zero bias). NOT a perceptual metric: for tests and the offline demo only, and callers
        must say plainly that φ is random."""
        model = cls(resolution)
        _random_init([model.layers[i] for i in _VGG16_CONVS], seed)
        return model

    @classmethod
    def pretrained(
        cls, path: str | Path | None = None, download: bool = True, resolution: int = 256
    ) -> VGG16Features:
        """The real φ: torchvision's VGG16 weights found by `weights.resolve_weights` (a
        UserWarning when the file is not the official one: `weights.load_backbone`)."""
        from lbrgm_fast.weights import load_backbone

        return cls.from_torchvision_state_dict(_warned(load_backbone("vgg16", path, download)), resolution)

    # -- forward ---------------------------------------------------------------------------------

    def _prepare(self, x: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise UserError(f"VGG16Features takes images [B, 3, H, W], got {list(x.shape)}")
        r = self.resolution
        if x.shape[-2] != r or x.shape[-1] != r:
            # 'area' as NVIDIA's projector; when upsizing it repeats pixels (nearest).
            x = F.interpolate(x, size=(r, r), mode="area")
        return (x - self.shift.to(x.dtype)) / self.scale.to(x.dtype)

    def normalized_taps(self, x: Tensor) -> list[Tensor]:
        """The five taps, each unit-normalised over channels (no lin weighting), float32."""
        h = self._prepare(x)
        taps: list[Tensor] = []
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if i in _VGG16_TAPS:
                # fp32 island: under autocast the tap may be bf16/fp16; its squared norm over
                # up to 512 channels needs float32 range and precision.
                with torch.autocast(device_type=h.device.type, enabled=False):
                    f = h.float()
                    taps.append(f / (f.square().sum(dim=1, keepdim=True).sqrt() + _EPS))
        return taps

    def features(self, x: Tensor) -> list[Tensor]:
        """NVIDIA-style features: normalised taps times sqrt(lin_c / (H_l·W_l)), float32.

        Returns five tensors [B, C_l, H_l, W_l]; Σ_l ‖a_l − b_l‖² between two images is
        LPIPS-VGG.
        """
        taps = self.normalized_taps(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return [t * getattr(self, f"tap_scale{k}") for k, t in enumerate(taps)]

    @staticmethod
    def feature_distance(fa: list[Tensor], fb: list[Tensor]) -> Tensor:
        """Σ over taps of the summed squared difference, per sample (B,), float32.

        `fb` may have batch 1 to compare many candidates with one fixed target.
        """
        with torch.autocast(device_type=fa[0].device.type, enabled=False):
            total = fa[0].new_zeros((), dtype=torch.float32)
            for a, b in zip(fa, fb):
                total = total + (a.float() - b.float()).square().sum(dim=(1, 2, 3))
            return total

    def distance(self, x: Tensor, y: Tensor) -> Tensor:
        """LPIPS-VGG v0.1 between x and y, per sample (B,)."""
        return self.feature_distance(self.features(x), self.features(y))

    def feature_loss(self, fa: list[Tensor], fb: list[Tensor]) -> Tensor:
        """BRGM/L-BRGM's perceptual term before λvgg, from features: the mean squared difference
        over NVIDIA's vector, LPIPS_vgg / D, per sample (B,). `fb` may have batch 1."""
        return self.feature_distance(fa, fb) / self.num_elements

    def perceptual_loss(self, x: Tensor, y: Tensor) -> Tensor:
        """`feature_loss` of two batches of images [B, 3, H, W] in [-1, 1], (B,)."""
        return self.feature_loss(self.features(x), self.features(y))

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.features(x)


class LpipsAlex(nn.Module):
    """LPIPS(alex) v0.1 between a reconstruction and the ground truth, as a monitor (B,).

    Built with the lpips package itself (the metric papers report), with a random backbone
    (`pnet_rand=True`, so lpips never downloads) into which torchvision AlexNet weights are
    copied. Gradients are not tracked: it only scores. Inputs [B, 3, H, W] in [-1, 1].
    """

    def __init__(self) -> None:
        super().__init__()
        import lpips

        with warnings.catch_warnings():
            # lpips passes torchvision's deprecated `pretrained=` argument.
            warnings.simplefilter("ignore", UserWarning)
            self.lpips = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False)
        self.requires_grad_(False)
        self.eval()

    def _convs(self) -> dict[int, nn.Conv2d]:
        net = self.lpips.net
        return {i: getattr(getattr(net, f"slice{s}"), str(i)) for i, s in _ALEX_CONV_SLICE.items()}

    @classmethod
    def from_torchvision_state_dict(cls, sd: Mapping[str, object]) -> LpipsAlex:
        """Load torchvision AlexNet weights (`alexnet-owt-7be5be79.pth`), whole or `features.*` only."""
        model = cls()
        _load_convs(model._convs(), sd, "AlexNet")
        return model

    @classmethod
    def random(cls, seed: int) -> LpipsAlex:
        """Seeded random backbone (Kaiming-normal fan-out, zero bias): tests and demo only."""
        model = cls()
        _random_init(list(model._convs().values()), seed)
        return model

    @classmethod
    def pretrained(cls, path: str | Path | None = None, download: bool = True) -> LpipsAlex:
        """The real monitor: torchvision's AlexNet weights found by `weights.resolve_weights` (a
        UserWarning when the file is not the official one: `weights.load_backbone`)."""
        from lbrgm_fast.weights import load_backbone

        return cls.from_torchvision_state_dict(_warned(load_backbone("alexnet", path, download)))

    @torch.no_grad()
    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or y.shape[-3:] != x.shape[-3:]:
            raise UserError(
                "LPIPS(alex) compares images [B, 3, H, W] of one size, "
                f"got {list(x.shape)} and {list(y.shape)}"
            )
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self.lpips(x.float(), y.float()).reshape(-1)
