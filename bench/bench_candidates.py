"""Time to score the N1 = 100 initial candidates with each forward backend, against eager torch.

    python bench/bench_candidates.py [--threads 1] [--candidates 100] [--configs ffhqlike64,f256]
                                     [--repeats 2] [--out bench/results/candidates.md]

For each generator shape an engine plan is built (random φ and monitor backbones, φ at 256 px as
in the published method), and `Reconstructor.run(steps=0)` restores an inpainting observation
(eyes missing) with each backend: eager torch (`TorchEngine`), ONNX Runtime on the CPU, and
`auto` (which measures both per phase and keeps the faster). The time is the runtime's own
"candidates" phase (generation + φ of all N1 candidates, batches of 8); the chosen z must be the
same with every backend. Shapes: the ffhqlike64 fixture generator, and a config-f generator at
256 px (channel_base 16384, z_dim = w_dim = 512) with random weights.

torch and ONNX Runtime get the same number of threads (`--threads`, default 1: the development
machine is shared, and one thread each keeps the comparison fair under load).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

from lbrgm_fast.build import build_plan
from lbrgm_fast.checkpoints import Checkpoint, save_lbrgm
from lbrgm_fast.config import GeneratorConfig
from lbrgm_fast.model import Generator
from lbrgm_fast.operators import Inpainting
from lbrgm_fast.plan import read_plan
from lbrgm_fast.reconstruct import Reconstructor
from lbrgm_fast.runtime.engines import TorchEngine
from lbrgm_fast.runtime.onnx_engine import OnnxRuntimeEngine
from lbrgm_fast.runtime.select import select_engine

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "stylegan2-ada"


def ffhqlike64() -> Generator:
    """The fixture generator from its weights.npz (as tests/reference.py builds it)."""
    kwargs = json.loads((FIXTURES / "ffhqlike64" / "init_kwargs.json").read_text())["init_kwargs"]
    synthesis = kwargs["synthesis_kwargs"]
    config = GeneratorConfig(
        z_dim=kwargs["z_dim"], w_dim=kwargs["w_dim"], img_resolution=kwargs["img_resolution"],
        img_channels=kwargs["img_channels"], mapping_layers=kwargs["mapping_kwargs"]["num_layers"],
        channel_base=synthesis["channel_base"], channel_max=synthesis["channel_max"],
        num_fp16_res=synthesis["num_fp16_res"], conv_clamp=synthesis["conv_clamp"],
    )
    weights = np.load(FIXTURES / "ffhqlike64" / "weights.npz")
    G = Generator(config)
    G.load_state_dict({k: torch.from_numpy(weights[k]) for k in weights.files if not k.endswith("resample_filter")})
    return G


def config_f_256() -> Generator:
    torch.manual_seed(0)
    return Generator(GeneratorConfig(z_dim=512, w_dim=512, img_resolution=256, channel_base=16384))


CONFIGS = {"ffhqlike64": ffhqlike64, "f256": config_f_256}


def checkpoint_file(G: Generator, folder: Path) -> Path:
    """The generator as an lbrgm checkpoint, the input `lbrgm-fast build` takes."""
    state = {k: v.detach().clone() for k, v in G.state_dict().items()}
    digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in state.values())).hexdigest()
    path = folder / "generator.safetensors"
    save_lbrgm(Checkpoint(G.config, state, "lbrgm", digest, True, str(path)), path)
    return path


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def bench_config(name: str, args: argparse.Namespace, folder: Path) -> dict:
    G = CONFIGS[name]().eval().requires_grad_(False)
    start = time.perf_counter()
    plan = read_plan(build_plan(checkpoint_file(G, folder), folder / f"{name}.plan", random_perceptual_seed=0))
    build_seconds = time.perf_counter() - start
    phi = plan.perceptual()
    eager = TorchEngine(G, phi, plan.monitor())

    start = time.perf_counter()
    auto = select_engine(plan, "auto", "cpu", torch_engine=eager, use_cache=False, threads=args.threads)
    auto_seconds = time.perf_counter() - start
    engines = {
        "torch (eager)": eager,
        "onnxruntime (CPU)": OnnxRuntimeEngine.from_plan(plan, "cpu", threads=args.threads),
        "auto": auto.engine,
    }

    R = G.img_resolution
    with torch.no_grad():
        truth = ((G(torch.randn(1, G.z_dim, generator=torch.Generator().manual_seed(1))) + 1) / 2).clamp(0, 1)
    operator = Inpainting.from_preset("eyes", R)
    observation = operator(truth)
    for engine in engines.values():  # untimed: ONNX Runtime creates its sessions on first use
        Reconstructor(G, phi, steps=0, candidates=8, early_stop="none", engine=engine).run(observation, operator)
    rows: dict[str, tuple[float, torch.Tensor]] = {}
    for round_ in range(args.repeats):  # interleaved rounds, best of each: the machine is shared
        for label, engine in engines.items():
            rec = Reconstructor(G, phi, steps=0, candidates=args.candidates, candidate_batch=8, early_stop="none", engine=engine)
            result = rec.run(observation, operator, seed=0)
            seconds = result.timings["seconds"]["candidates"]
            if label not in rows or seconds < rows[label][0]:
                rows[label] = (seconds, result.initial_z)
            print(f"{name} round {round_} {label}: {seconds:.2f} s (load {load_average()})", flush=True)
    return {
        "rows": rows, "auto": auto, "auto_seconds": auto_seconds, "build_seconds": build_seconds,
        "parameters": sum(p.numel() for p in G.parameters()), "resolution": R,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--configs", default="ffhqlike64,f256")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds; the best time of each backend counts")
    parser.add_argument("--out", type=Path, default=Path("bench/results/candidates.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    load_before = load_average()

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.configs.split(","):
            folder = Path(tmp) / name
            folder.mkdir()
            results[name] = bench_config(name, args, folder)

    cpu = subprocess.run(["sh", "-c", "lscpu | grep 'Model name' | cut -d: -f2"], capture_output=True, text=True, check=False).stdout.strip()
    lines = [
        f"# Scoring N1 = {args.candidates} initial candidates: forward backends vs eager torch",
        "",
        (
            f"- date: {datetime.date.today()}; machine: {cpu} ({os.cpu_count()} cores, shared), {platform.machine()}; "
            f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}"
        ),
        f"- threads: {args.threads} for torch and for ONNX Runtime; load average before: {load_before}, after: {load_average()}",
        (
            f"- command: `python bench/bench_candidates.py --threads {args.threads} --candidates {args.candidates} "
            f"--configs {args.configs} --repeats {args.repeats}` (best of {args.repeats} interleaved rounds per backend)"
        ),
        (
            "- what: `Reconstructor.run(steps=0)` on an inpainting observation (eyes missing); the time is the runtime's "
            '"candidates" phase (generate + φ for every candidate, batches of 8, φ = VGG16 at 256 px with a random backbone)'
        ),
        "",
        "| generator | backend | seconds | × eager | same z as eager |",
        "|---|---|---|---|---|",
    ]
    for name, r in results.items():
        eager_seconds, eager_z = r["rows"]["torch (eager)"]
        shape = f"{name} ({r['resolution']} px, {r['parameters'] / 1e6:.1f} M params)"
        for label, (seconds, z) in r["rows"].items():
            lines.append(f"| {shape} | {label} | {seconds:.1f} | {eager_seconds / seconds:.2f} | {'yes' if torch.equal(z, eager_z) else 'NO'} |")
    lines.append("")
    for name, r in results.items():
        lines.append(f"- {name}: plan built in {r['build_seconds']:.0f} s; `auto` measured for {r['auto_seconds']:.0f} s "
                     f"(once per plan and machine, then cached) and chose {r['auto'].choice}: {r['auto'].reason}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
