"""What `lbrgm-fast info` shows about a checkpoint or an engine plan."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lbrgm_fast.checkpoints import read_checkpoint


def describe_checkpoint(path: str | Path) -> dict[str, Any]:
    """Format, shapes, precision settings, w_avg presence and sha256 of a generator checkpoint."""
    ckpt = read_checkpoint(path)
    cfg = ckpt.config
    return {
        "kind": "checkpoint",
        "format": ckpt.format,
        "resolution": cfg.img_resolution,
        "num_ws": cfg.num_ws,
        "z_dim": cfg.z_dim,
        "w_dim": cfg.w_dim,
        "mapping_layers": cfg.mapping_layers,
        "channels": {str(r): cfg.channels_at(r) for r in cfg.block_resolutions},
        "parameters": sum(t.numel() for k, t in ckpt.state_dict.items() if not k.endswith(("noise_const", "w_avg"))),
        "fp16_resolutions": cfg.fp16_resolutions,
        "conv_clamp": cfg.conv_clamp,
        "has_w_avg": ckpt.has_w_avg,
        "sha256": ckpt.sha256,
        **{k: v for k, v in ckpt.details.items() if isinstance(v, (str, int, float, bool))},
    }


def describe(path: str | Path) -> dict[str, Any]:
    """Describe an engine plan (a zip with an lbrgm manifest) or any supported checkpoint."""
    from lbrgm_fast.plan import is_plan, read_plan

    if is_plan(path):
        return {"kind": "plan", **read_plan(path).describe()}
    return describe_checkpoint(path)
