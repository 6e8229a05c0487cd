"""What a StyleGAN2 state dict must look like for a given `GeneratorConfig`, and checks against it.

Key names are NVIDIA's `training.networks.Generator.state_dict()` keys without the
`*.resample_filter` buffers (the filter is fixed to [1, 3, 3, 1]; loaders check and drop it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from lbrgm_fast.config import GeneratorConfig
from lbrgm_fast.errors import CheckpointError

Shape = tuple[int, ...]

# Number of z samples and seed used to estimate w_avg when a checkpoint has none.
W_AVG_SAMPLES = 10_000
W_AVG_SEED = 123


def expected_shapes(config: GeneratorConfig) -> dict[str, Shape]:
    """Every state-dict key of a generator with `config` and its shape, in NVIDIA's order."""
    shapes: dict[str, Shape] = {}
    w, rgb = config.w_dim, config.img_channels

    def layer(prefix: str, in_ch: int, out_ch: int, res: int) -> None:
        shapes[f"{prefix}.weight"] = (out_ch, in_ch, 3, 3)
        shapes[f"{prefix}.noise_strength"] = ()
        shapes[f"{prefix}.bias"] = (out_ch,)
        shapes[f"{prefix}.noise_const"] = (res, res)
        shapes[f"{prefix}.affine.weight"] = (in_ch, w)
        shapes[f"{prefix}.affine.bias"] = (in_ch,)

    for res in config.block_resolutions:
        block, out_ch = f"synthesis.b{res}", config.channels_at(res)
        if res == 4:
            shapes[f"{block}.const"] = (out_ch, 4, 4)
        else:
            layer(f"{block}.conv0", config.channels_at(res // 2), out_ch, res)
        layer(f"{block}.conv1", out_ch, out_ch, res)
        shapes[f"{block}.torgb.weight"] = (rgb, out_ch, 1, 1)
        shapes[f"{block}.torgb.bias"] = (rgb,)
        shapes[f"{block}.torgb.affine.weight"] = (out_ch, w)
        shapes[f"{block}.torgb.affine.bias"] = (out_ch,)

    shapes["mapping.w_avg"] = (w,)
    dims = [config.z_dim] + [w] * config.mapping_layers
    for i in range(config.mapping_layers):
        shapes[f"mapping.fc{i}.weight"] = (dims[i + 1], dims[i])
        shapes[f"mapping.fc{i}.bias"] = (dims[i + 1],)
    return shapes


def _preview(items: list[str], limit: int = 4) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def check_state_dict(state: Mapping[str, torch.Tensor], config: GeneratorConfig, source: str) -> None:
    """Raise `CheckpointError` unless `state` has exactly the keys and shapes `config` implies."""
    expected = expected_shapes(config)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} is {list(state[k].shape)}, expected {list(shape)}"
        for k, shape in expected.items()
        if k in state and tuple(state[k].shape) != shape
    ]
    problems = []
    if missing:
        problems.append(f"missing {_preview(missing)}")
    if unexpected:
        problems.append(f"unexpected {_preview(unexpected)}")
    if wrong:
        problems.append(_preview(wrong, 2))
    if problems:
        raise CheckpointError(
            f"cannot use checkpoint '{source}': its tensor shapes do not fit a StyleGAN2 generator "
            f"({config.img_resolution}px, w_dim {config.w_dim}): " + "; ".join(problems)
        )


def reference_filter() -> torch.Tensor:
    """NVIDIA's resample filter: outer([1, 3, 3, 1]) normalised to sum 1, [4, 4]."""
    f = torch.tensor([1.0, 3.0, 3.0, 1.0])
    f = torch.outer(f, f)
    return f / f.sum()


def is_reference_filter(tensor: torch.Tensor, scale: float = 1.0) -> bool:
    """True if `tensor` equals `scale` times the normalised [1, 3, 3, 1] filter."""
    ref = reference_filter() * scale
    t = tensor.detach().to("cpu", torch.float32)
    return t.shape == ref.shape and bool(torch.allclose(t, ref, rtol=1e-5, atol=1e-7))


_INT_FIELDS = ("z_dim", "w_dim", "img_resolution", "img_channels", "mapping_layers", "channel_base", "channel_max", "num_fp16_res")


def make_config(source: str, **fields: object) -> GeneratorConfig:
    """Build a `GeneratorConfig`, turning its validation errors into a `CheckpointError`."""
    for name in _INT_FIELDS:
        value = fields.get(name)
        if name in fields and (not isinstance(value, int) or isinstance(value, bool)):
            raise CheckpointError(f"cannot use checkpoint '{source}': {name} is {value!r}, expected an integer")
    try:
        return GeneratorConfig(**fields)  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot use checkpoint '{source}': unsupported generator settings ({exc})") from None


def solve_channels(channels: Mapping[int, int], source: str) -> tuple[int, int]:
    """Find (channel_base, channel_max) with min(base // r, max) == channels[r] for every r.

    Returns the smallest channel_base that works; raises `CheckpointError` if none does.
    """
    channel_max = max(channels.values())
    low, high = 1, math.inf
    for res, ch in channels.items():
        if ch < channel_max:  # base // res == ch exactly
            low, high = max(low, ch * res), min(high, ch * res + res - 1)
        else:  # base // res >= channel_max
            low = max(low, channel_max * res)
    if low > high:
        table = ", ".join(f"{r}: {c}" for r, c in sorted(channels.items()))
        raise CheckpointError(
            f"cannot use checkpoint '{source}': no channel_base/channel_max pair reproduces its "
            f"channel table {{{table}}}"
        )
    return int(low), int(channel_max)


def estimate_w_avg(state: Mapping[str, torch.Tensor], config: GeneratorConfig) -> torch.Tensor:
    """Mean of the mapping network's output over W_AVG_SAMPLES z drawn from a fixed seed.

    z ~ N(0, I) from `torch.Generator().manual_seed(W_AVG_SEED)` on the CPU, float32; the mapping
    is NVIDIA's (2nd-moment normalisation, equalised-lr linear layers with leaky ReLU x sqrt(2)).
    Used when a checkpoint stores no w_avg (rosinality training checkpoints), so results are
    reproducible but differ slightly from the tracked average the real checkpoint would have.
    """
    gen = torch.Generator().manual_seed(W_AVG_SEED)
    z = torch.randn(W_AVG_SAMPLES, config.z_dim, generator=gen)
    lr = config.mapping_lr_multiplier
    with torch.no_grad():
        x = z * (z.square().mean(dim=1, keepdim=True) + 1e-8).rsqrt()
        for i in range(config.mapping_layers):
            weight = state[f"mapping.fc{i}.weight"].float()
            bias = state[f"mapping.fc{i}.bias"].float()
            x = x @ (weight * (lr / weight.shape[1] ** 0.5)).t() + bias * lr
            x = torch.nn.functional.leaky_relu(x, 0.2) * math.sqrt(2)
        return x.mean(dim=0)
