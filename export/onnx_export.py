"""ONNX export (opset 17) of everything the forward-only phases run.

Four graphs, each with a dynamic batch dimension (one graph serves every batch size):

* mapping:   z [N, z_dim] -> ws [N, num_ws, w_dim]
* synthesis: ws [N, num_ws, w_dim] -> images [N, C, R, R], the checkpoint's constant noise baked
  in (or, with `noise_inputs=True`, one noise input [N, 1, H, W] per conv layer)
* features:  images [N, 3, H, W] (any H, W) -> φ's five taps [N, C_l, r_l, r_l], the area resize
  to φ's resolution inside the graph
* lpips:     x, y [N, 3, R, R] -> LPIPS(alex) [N]

The model code is traced as is (non-fused modulated conv, upfirdn via reshape/pad/depthwise conv:
no custom ops) with torch's dynamo exporter. That exporter emits opset 18; `downgrade_to_opset17`
rewrites the few ops whose schema changed in 18 (TensorRT 10 and every ONNX Runtime read 17).

Each graph also records, in its metadata (`FP32_TENSORS_KEY`), the tensors a reduced-precision
build must keep in float32: the demodulation and every normalisation (see `mark_fp32_tensors`).
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import onnx
import torch
from lbrgm_fast.kernels.forms import convolution_forms
from onnx import helper, numpy_helper
from torch import Tensor, nn

from lbrgm_fast.model import Generator
from lbrgm_fast.perceptual import LpipsAlex, VGG16Features

__all__ = [
    "FP32_TENSORS_KEY",
    "OPSET",
    "ExportError",
    "GraphSpec",
    "area_resize",
    "downgrade_to_opset17",
    "export_features",
    "export_lpips",
    "export_mapping",
    "export_synthesis",
    "fp32_tensors",
    "graph_spec",
    "mark_fp32_tensors",
]

OPSET = 17
#: ONNX model metadata key: JSON list of tensor names to keep in float32 (see `mark_fp32_tensors`).
FP32_TENSORS_KEY = "lbrgm.fp32_tensors"
# The dynamo exporter's lowest opset; `downgrade_to_opset17` takes the graph the last step down.
_EXPORTER_OPSET = 18
_MAX_BATCH = 4096
_MIN_SIDE = 8  # smallest image side the features graph accepts (a x128 super-resolution of 1024 px)
_MAX_SIDE = 8192


class ExportError(RuntimeError):
    """A graph could not be exported or converted (a bug or an unsupported torch/onnx version)."""


@dataclass(frozen=True)
class GraphSpec:
    """Names and shapes of a graph's inputs and outputs; a dimension is an int or a symbol
    ("batch", "height", "width") that the caller chooses per run."""

    inputs: dict[str, list[int | str]]
    outputs: dict[str, list[int | str]]

    def to_dict(self) -> dict[str, dict[str, list[int | str]]]:
        return {"inputs": self.inputs, "outputs": self.outputs}


# ----------------------------------------------------------------------------------------------
# Exportable formulations


def _area_matrix(size_in: int, size_out: int, like: Tensor) -> Tensor:
    """[size_out, size_in] averaging matrix of adaptive average pooling along one axis.

    Output i averages inputs floor(i·in/out) ... ceil((i+1)·in/out) - 1, exactly PyTorch's
    `F.interpolate(mode="area")` (which is adaptive average pooling), for downsizing and upsizing
    alike. Built from `arange` on the traced size, so it stays dynamic in the exported graph
    (ONNX has no adaptive pooling).
    """
    i = torch.arange(size_out, device=like.device)
    start = torch.div(i * size_in, size_out, rounding_mode="floor")
    end = torch.div((i + 1) * size_in + size_out - 1, size_out, rounding_mode="floor")
    j = torch.arange(size_in, device=like.device)
    inside = (j[None, :] >= start[:, None]) & (j[None, :] < end[:, None])
    return inside.to(like.dtype) / (end - start)[:, None].to(like.dtype)


def area_resize(x: Tensor, size: int) -> Tensor:
    """`F.interpolate(x, (size, size), mode="area")` as two matrix products, exportable with
    dynamic H and W. x: [N, C, H, W] -> [N, C, size, size]."""
    rows = _area_matrix(x.shape[-2], size, x)  # [size, H]
    cols = _area_matrix(x.shape[-1], size, x)  # [size, W]
    return rows @ x @ cols.t()


class _Mapping(nn.Module):
    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.mapping = generator.mapping

    def forward(self, z: Tensor) -> Tensor:
        return self.mapping(z)


class _Synthesis(nn.Module):
    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.synthesis = generator.synthesis

    def forward(self, ws: Tensor) -> Tensor:
        return self.synthesis(ws, noise_mode="const")


class _SynthesisWithNoise(nn.Module):
    def __init__(self, generator: Generator) -> None:
        super().__init__()
        self.synthesis = generator.synthesis

    def forward(self, ws: Tensor, noise: tuple[Tensor, ...]) -> Tensor:
        return self.synthesis(ws, noise=list(noise))


class _Features(nn.Module):
    def __init__(self, perceptual: VGG16Features) -> None:
        super().__init__()
        self.perceptual = perceptual

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        # φ's own resize is F.interpolate(area), which does not export with dynamic H, W.
        x = area_resize(images, self.perceptual.resolution)
        return tuple(self.perceptual.features(x))


class _Lpips(nn.Module):
    def __init__(self, monitor: LpipsAlex) -> None:
        super().__init__()
        self.monitor = monitor

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        return self.monitor(x, y)


# ----------------------------------------------------------------------------------------------
# Public export functions


def export_mapping(generator: Generator) -> bytes:
    """ONNX bytes of the mapping network: z [N, z_dim] -> ws [N, num_ws, w_dim] (psi = 1)."""
    z = torch.randn(2, generator.z_dim, generator=torch.Generator().manual_seed(0))
    return _export(_Mapping(generator), (z,), ["z"], ["ws"], ({0: _batch()},), "mapping")


def export_synthesis(generator: Generator, noise_inputs: bool = False) -> bytes:
    """ONNX bytes of the synthesis network (non-fused modulated conv).

    Args:
        generator: The generator (its parameters and constant noise become initializers).
        noise_inputs: Take the per-layer noise as inputs `noise0`, `noise1`, ... ([N, 1, H, W],
            `SynthesisNetwork.noise_shapes` order) instead of baking in the stored noise.
    """
    if generator.synthesis.fused_modconv:
        raise ExportError("the fused modulated conv bakes the batch size into the graph; export the non-fused form")
    ws = torch.randn(2, generator.num_ws, generator.w_dim, generator=torch.Generator().manual_seed(0))
    batch = _batch()
    if not noise_inputs:
        return _export(_Synthesis(generator), (ws,), ["ws"], ["images"], ({0: batch},), "synthesis")
    shapes = generator.synthesis.noise_shapes()
    noise = tuple(torch.randn(2, 1, h, w, generator=torch.Generator().manual_seed(i)) for i, (h, w) in enumerate(shapes))
    names = ["ws"] + [f"noise{i}" for i in range(len(shapes))]
    dynamic = ({0: batch}, tuple({0: batch} for _ in shapes))
    return _export(_SynthesisWithNoise(generator), (ws, noise), names, ["images"], dynamic, "synthesis_noise")


def export_features(perceptual: VGG16Features) -> bytes:
    """ONNX bytes of φ: images [N, 3, H, W] in [-1, 1] (any H, W >= 8) -> taps tap0 ... tap4."""
    side = 2 * perceptual.resolution  # a traced size unlike the output's, so no shape is specialised
    x = torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1
    height = torch.export.Dim("height", min=_MIN_SIDE, max=_MAX_SIDE)
    width = torch.export.Dim("width", min=_MIN_SIDE, max=_MAX_SIDE)
    outputs = [f"tap{k}" for k in range(5)]
    return _export(_Features(perceptual), (x,), ["images"], outputs, ({0: _batch(), 2: height, 3: width},), "features")


def export_lpips(monitor: LpipsAlex, resolution: int) -> bytes:
    """ONNX bytes of the LPIPS(alex) monitor: x, y [N, 3, resolution, resolution] -> [N]."""
    gen = torch.Generator().manual_seed(0)
    x, y = (torch.rand(2, 3, resolution, resolution, generator=gen) * 2 - 1 for _ in range(2))
    batch = _batch()
    return _export(_Lpips(monitor), (x, y), ["x", "y"], ["distance"], ({0: batch}, {0: batch}), "lpips")


def graph_spec(model_bytes: bytes) -> GraphSpec:
    """Input and output names and shapes of an ONNX graph (symbols for dynamic dimensions)."""
    model = onnx.load_from_string(model_bytes)

    def dims(value: onnx.ValueInfoProto) -> list[int | str]:
        return [d.dim_param if d.dim_param else int(d.dim_value) for d in value.type.tensor_type.shape.dim]

    initializers = {t.name for t in model.graph.initializer}
    return GraphSpec(
        inputs={v.name: dims(v) for v in model.graph.input if v.name not in initializers},
        outputs={v.name: dims(v) for v in model.graph.output},
    )


def fp32_tensors(model_bytes: bytes) -> set[str]:
    """The tensor names `mark_fp32_tensors` recorded in a graph's metadata (empty if none)."""
    model = onnx.load_from_string(model_bytes)
    for prop in model.metadata_props:
        if prop.key == FP32_TENSORS_KEY:
            return set(json.loads(prop.value))
    return set()


# ----------------------------------------------------------------------------------------------
# Export machinery


def _batch() -> torch.export.Dim:
    return torch.export.Dim("batch", min=1, max=_MAX_BATCH)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The exporter prints progress and warns about things that do not concern the user."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def _export(
    module: nn.Module,
    args: tuple,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_shapes: tuple,
    graph_name: str,
) -> bytes:
    module = module.eval()
    try:
        # convolution_forms: convolutions, not the forms the compiled step traces (forms.py).
        with _quiet(), torch.no_grad(), convolution_forms():
            program = torch.onnx.export(
                module,
                args,
                dynamo=True,
                opset_version=_EXPORTER_OPSET,
                input_names=list(input_names),
                output_names=list(output_names),
                dynamic_shapes=dynamic_shapes,
                # The onnxscript optimizer drops the `+ eps` of the normalisations (seen with
                # onnxscript 0.7: `f / (‖f‖ + 1e-10)` became `f / ‖f‖`, NaN where a ReLU tap is
                # all zero). ONNX Runtime and TensorRT fold constants themselves anyway.
                optimize=False,
                verbose=False,
            )
    except Exception as exc:  # the exporter raises many private error types
        raise ExportError(f"cannot export the {graph_name} graph to ONNX: {str(exc).splitlines()[0]}") from exc
    model = _fold_constants(program.model_proto)
    downgrade_to_opset17(model)
    mark_fp32_tensors(model)
    model.producer_name = "lbrgm-fast"
    model.doc_string = f"lbrgm-fast {graph_name} graph"
    helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, "lbrgm.graph": graph_name})
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the exported {graph_name} graph is invalid: {str(exc).splitlines()[0]}") from exc
    return model.SerializeToString()


def _fold_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Constant folding only (shape arithmetic, reduction axes, weight reshapes), none of the
    optimizer's rewrite rules (see the note on `optimize=False` above)."""
    from onnxscript import ir
    from onnxscript.ir.passes import common as passes
    from onnxscript.optimizer import fold_constants

    graph = ir.serde.deserialize_model(model)
    fold_constants(graph)
    passes.RemoveUnusedNodesPass()(graph)
    passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(graph)
    return ir.serde.serialize_model(graph)


# Ops whose schema changed between opsets 17 and 18: the `axes` attribute of these reductions
# became an optional input.
_REDUCTIONS_18 = {
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
    "ReduceMin", "ReduceProd", "ReduceSumSquare",
}


def downgrade_to_opset17(model: onnx.ModelProto) -> None:
    """Rewrite an opset-18 graph as opset 17, in place.

    Only what is needed and provably equivalent: Pad-18 without its new `axes` input is Pad-13;
    a Reduce*-18 with a constant `axes` input is Reduce*-13 with that attribute. Any other op
    whose schema differs between 17 and 18 raises ExportError rather than being guessed at.
    (onnx's own version converter has no Pad 18 -> 17 adapter.)
    """
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            raise ExportError(f"graph uses the non-standard op {node.domain}::{node.op_type}")
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise ExportError(f"graph uses control flow ({node.op_type}), which this exporter does not convert")
        new = onnx.defs.get_schema(node.op_type, _EXPORTER_OPSET).since_version
        old = onnx.defs.get_schema(node.op_type, OPSET).since_version
        if new == old:
            continue
        if node.op_type == "Pad" and (len(node.input) < 4 or not node.input[3]):
            del node.input[3:]
        elif node.op_type in _REDUCTIONS_18 and _axes_to_attribute(node, constants):
            pass
        else:
            raise ExportError(f"cannot express {node.op_type} (node {node.name}) in opset {OPSET}")
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = OPSET
    used = {name for node in model.graph.node for name in node.input}
    unused = [t for t in model.graph.initializer if t.name not in used]
    for tensor in unused:  # the axes tensors that became attributes
        model.graph.initializer.remove(tensor)


def _axes_to_attribute(node: onnx.NodeProto, constants: dict) -> bool:
    """Move a reduction's constant `axes` input into the opset-13 attribute; False if not constant."""
    noop = [a for a in node.attribute if a.name == "noop_with_empty_axes"]
    if any(a.i for a in noop):
        return False
    for attribute in noop:  # 0 is the default; opset 13 does not know the attribute at all
        node.attribute.remove(attribute)
    if len(node.input) < 2 or not node.input[1]:
        del node.input[1:]
        return True  # no axes: reduce over all axes, the same in both opsets
    axes = constants.get(node.input[1])
    if axes is None:
        return False
    del node.input[1:]
    node.attribute.append(helper.make_attribute("axes", [int(a) for a in axes.reshape(-1)]))
    return True


# ----------------------------------------------------------------------------------------------
# Float32 islands for reduced-precision builds

_SQUARES = {"Pow", "Mul"}
_REDUCES = {"ReduceSum", "ReduceMean", "ReduceL2", "ReduceSumSquare"}
_ROOTS = {"Sqrt", "Reciprocal"}
_FOLLOWERS = {"Add", "Div", "Mul", "Reciprocal"}


def mark_fp32_tensors(model: onnx.ModelProto) -> set[str]:
    """Record in the model's metadata which tensors an FP16 build must keep in float32.

    The rule, on the graph's structure (so it holds for any generator or φ):
      1. every float tensor of rank <= 2: per-sample vectors (the whole mapping network, the
         style affines, the demodulation coefficients);
      2. every reduction, square root and reciprocal, and a square that feeds a reduction
         (x² of a 512-channel activation overflows float16);
      3. the element-wise Add/Div/Mul/Reciprocal chain after a square root (the +eps and the
         division of a normalisation, φ's per-tap scale), up to the first other op.
    Activations and convolutions are not marked: they are where FP16 pays.

    Returns the marked tensor names (also stored under FP32_TENSORS_KEY).
    """
    inferred = onnx.shape_inference.infer_shapes(model)
    ranks: dict[str, int] = {}
    for value in [*inferred.graph.value_info, *inferred.graph.output]:
        tensor = value.type.tensor_type
        if tensor.elem_type == onnx.TensorProto.FLOAT and tensor.HasField("shape"):
            ranks[value.name] = len(tensor.shape.dim)
    producers = {out: node for node in model.graph.node for out in node.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    marked: set[str] = set()
    for node in model.graph.node:
        outputs = [o for o in node.output if o]
        if any(0 < ranks.get(o, 99) <= 2 for o in outputs) or node.op_type in _REDUCES | _ROOTS:
            marked.update(outputs)
        if node.op_type in _REDUCES:
            source = producers.get(node.input[0])
            if source is not None and source.op_type in _SQUARES:
                marked.update(o for o in source.output if o)
        if node.op_type == "Sqrt":
            frontier = list(outputs)
            while frontier:
                for follower in consumers.get(frontier.pop(), []):
                    if follower.op_type in _FOLLOWERS and follower.output[0] not in marked:
                        marked.add(follower.output[0])
                        frontier.append(follower.output[0])
    names = sorted(marked)
    props = {p.key: p.value for p in model.metadata_props}
    props[FP32_TENSORS_KEY] = json.dumps(names)
    helper.set_model_props(model, props)
    return marked
