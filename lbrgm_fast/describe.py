"""What `lbrgm-fast info` shows about a checkpoint or an engine plan."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

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
    """Describe an engine plan (a zip with the manifest first) or any supported checkpoint.

    A plan gets every check `run --engine` makes (read_plan), so `info` never calls a plan
    valid that `run` refuses.
    """
    from lbrgm_fast.plan import is_plan_file, read_plan

    if is_plan_file(path):
        return {"kind": "plan", **read_plan(path).describe()}
    return describe_checkpoint(path)


def describe_machine() -> dict[str, Any]:
    """What `run` would choose on this machine by default: the device, what its CPU has, and the
    optimisation step's precision with the reason."""
    from lbrgm_fast.runtime.devices import cpu_features, resolve_device
    from lbrgm_fast.runtime.step import default_precision

    device = resolve_device("auto")
    cpu = cpu_features()
    precision, why = default_precision(device)
    # torch's intra-op threads against the CPUs this process may use: fewer threads than CPUs
    # leave cores idle (set OMP_NUM_THREADS or torch.set_num_threads to change it).
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"device": str(device), "cpu_capability": cpu.capability, "avx512_bf16": cpu.avx512_bf16, "amx": cpu.amx,
            "torch_threads": torch.get_num_threads(), "usable_cpus": usable, "step_precision": precision, "why": why}
