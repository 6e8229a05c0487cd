"""ONNX export: ONNX Runtime runs the exported graphs with the torch modules' results (float32,
relative error <= 1e-4) for several batch sizes from one graph, on both NVIDIA fixture
generators; opset 17; the float32 marks a reduced-precision build relies on.

The tiny32 graphs are those of the shared test plan (tests/plans.py), exported once a session."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

from lbrgm_fast.export.onnx_export import (
    ExportError,
    area_resize,
    downgrade_to_opset17,
    export_features,
    export_mapping,
    export_synthesis,
    fp32_tensors,
    graph_spec,
)
from lbrgm_fast.model import Generator
from lbrgm_fast.perceptual import LpipsAlex, VGG16Features
from lbrgm_fast.plan import Plan, read_plan

from plans import PHI_RESOLUTION, SEED, tiny32_plan
from reference import NVIDIA_FIXTURES, nvidia_generator, nvidia_io, rel_error


TOLERANCE = 1e-4
BATCHES = (1, 3, 5)


def run_onnx(model: bytes, *inputs: torch.Tensor) -> list[torch.Tensor]:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return [torch.from_numpy(o) for o in session.run(None, {n: t.numpy() for n, t in zip(names, inputs)})]


@pytest.fixture(scope="session")
def plan(tmp_path_factory: pytest.TempPathFactory) -> Plan:
    """The shared tiny32 test plan: its graphs are what `build_plan` exported."""
    return read_plan(tiny32_plan(tmp_path_factory))


@pytest.fixture(scope="module", params=NVIDIA_FIXTURES)
def exported(request: pytest.FixtureRequest, plan: Plan) -> tuple[str, Generator, bytes, bytes]:
    G = nvidia_generator(request.param)
    if request.param == "tiny32":  # exported once already, for the shared plan
        return request.param, G, plan.onnx("mapping"), plan.onnx("synthesis")
    return request.param, G, export_mapping(G), export_synthesis(G)


def test_area_resize_is_torch_area_interpolation() -> None:
    gen = torch.Generator().manual_seed(0)
    for size_in, size_out in [(64, 32), (16, 32), (32, 32), (48, 32), (24, 32), (1024, 256), (8, 256)]:
        x = torch.randn(2, 3, size_in, size_in, generator=gen)
        expected = F.interpolate(x, size=(size_out, size_out), mode="area")
        assert rel_error(area_resize(x, size_out), expected) < 1e-6, (size_in, size_out)


def test_mapping_and_synthesis_match_torch(exported: tuple[str, Generator, bytes, bytes]) -> None:
    name, G, mapping, synthesis = exported
    io = nvidia_io(name)
    for batch in BATCHES:
        z = torch.randn(batch, G.z_dim, generator=torch.Generator().manual_seed(batch))
        (ws,) = run_onnx(mapping, z)
        assert rel_error(ws, G.mapping(z)) < TOLERANCE, (name, batch)
        w_plus = io["w_plus"][:1].repeat(batch, 1, 1) + 0.1 * torch.randn(batch, G.num_ws, G.w_dim)
        (images,) = run_onnx(synthesis, w_plus)
        assert rel_error(images, G.synthesis(w_plus, noise_mode="const")) < TOLERANCE, (name, batch)
    # And against the reference implementation's own outputs.
    (images,) = run_onnx(synthesis, io["w_plus"])
    assert rel_error(images, io["img_const"]) < TOLERANCE


def test_graphs_are_opset_17_with_a_dynamic_batch(exported: tuple[str, Generator, bytes, bytes]) -> None:
    _, G, mapping, synthesis = exported
    for model in (mapping, synthesis):
        proto = onnx.load_from_string(model)
        assert {o.domain: o.version for o in proto.opset_import}[""] == 17
        onnx.checker.check_model(proto, full_check=True)
    assert graph_spec(mapping).inputs == {"z": ["batch", G.z_dim]}
    assert graph_spec(synthesis).outputs == {"images": ["batch", 3, G.img_resolution, G.img_resolution]}


def test_demodulation_is_marked_fp32(exported: tuple[str, Generator, bytes, bytes]) -> None:
    """Every square root, reciprocal and reduction (the demodulation) and the style vectors are
    marked; no convolution output is (that is where FP16 pays)."""
    _, G, _, synthesis = exported
    proto = onnx.load_from_string(synthesis)
    marked = fp32_tensors(synthesis)
    by_op: dict[str, list[str]] = {}
    for node in proto.graph.node:
        by_op.setdefault(node.op_type, []).extend(node.output)
    for op in ("Sqrt", "Reciprocal", "ReduceSum", "MatMul"):
        assert by_op[op] and set(by_op[op]) <= marked, op
    assert not marked & set(by_op["Conv"] + by_op["ConvTranspose"])
    assert len(by_op["Sqrt"]) == G.num_ws - 1  # one demodulation per conv layer


def test_synthesis_with_noise_inputs(tiny32: Generator) -> None:
    model = export_synthesis(tiny32, noise_inputs=True)
    shapes = tiny32.synthesis.noise_shapes()
    assert list(graph_spec(model).inputs) == ["ws"] + [f"noise{i}" for i in range(len(shapes))]
    for batch in (1, 4):
        gen = torch.Generator().manual_seed(batch)
        ws = torch.randn(batch, tiny32.num_ws, tiny32.w_dim, generator=gen)
        noise = [torch.randn(batch, 1, h, w, generator=gen) for h, w in shapes]
        (images,) = run_onnx(model, ws, *noise)
        assert rel_error(images, tiny32.synthesis(ws, noise=noise)) < TOLERANCE


def test_features_match_torch_at_any_input_size(plan: Plan) -> None:
    """One graph for every observation size: the area resize to φ's resolution is inside."""
    phi = VGG16Features.random(SEED, resolution=PHI_RESOLUTION)  # what the plan was built from
    model = plan.onnx("features")
    spec = graph_spec(model)
    assert spec.inputs == {"images": ["batch", 3, "height", "width"]}
    assert spec.outputs["tap0"] == ["batch", 64, 32, 32]
    for batch, side in [(1, 32), (3, 64), (2, 16), (2, 8), (1, 48)]:
        x = torch.rand(batch, 3, side, side, generator=torch.Generator().manual_seed(side)) * 2 - 1
        for out, ref in zip(run_onnx(model, x), phi.features(x)):
            assert rel_error(out, ref) < TOLERANCE, (batch, side)
    marked = fp32_tensors(model)
    proto = onnx.load_from_string(model)
    # Each tap's f / (sqrt(sum f²) + eps): the norm, and the division by it, stay float32.
    norms = [n.output[0] for n in proto.graph.node if n.op_type in ("Sqrt", "ReduceSum")]
    divisions = [n.output[0] for n in proto.graph.node if n.op_type == "Div" and n.input[1] in marked]
    assert len(norms) == 10 and len(divisions) >= 5 and set(norms + divisions) <= marked


def test_features_keep_the_normalisation_epsilon() -> None:
    """An all-zero tap gives 0 / (0 + eps) = 0, not NaN: the exported graph keeps the + eps
    (onnxscript's optimizer drops it; the exporter does not use it)."""
    phi = VGG16Features(resolution=16)  # the bare constructor: an all-zero backbone
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    outputs = run_onnx(export_features(phi), x)
    assert all(torch.isfinite(o).all() and torch.equal(o, r) for o, r in zip(outputs, phi.features(x)))


def test_lpips_matches_torch(plan: Plan) -> None:
    monitor = LpipsAlex.random(SEED + 1)
    model = plan.onnx("lpips")
    for batch in BATCHES:
        gen = torch.Generator().manual_seed(batch)
        x, y = (torch.rand(batch, 3, 32, 32, generator=gen) * 2 - 1 for _ in range(2))
        (distance,) = run_onnx(model, x, y)
        assert distance.shape == (batch,)
        assert rel_error(distance, monitor(x, y)) < TOLERANCE


def test_fused_modconv_is_refused(tiny32: Generator) -> None:
    tiny32.synthesis.fused_modconv = True
    try:
        with pytest.raises(ExportError, match="non-fused"):
            export_synthesis(tiny32)
    finally:
        tiny32.synthesis.fused_modconv = False


# -- opset 18 -> 17 ---------------------------------------------------------------------------------


def _model(nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto]) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 3])
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def test_downgrade_rewrites_reductions_and_pad() -> None:
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [2])
    pads = helper.make_tensor("pads", TensorProto.INT64, [6], [0, 0, 1, 0, 0, 1])
    model = _model(
        [
            helper.make_node("ReduceMean", ["x", "axes"], ["m"], keepdims=1, noop_with_empty_axes=0),
            helper.make_node("Pad", ["m", "pads"], ["y"]),
        ],
        [axes, pads],
    )
    x = np.random.default_rng(0).standard_normal((2, 3, 4)).astype(np.float32)
    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    downgrade_to_opset17(model)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    assert [t.name for t in model.graph.initializer] == ["pads"]  # axes became an attribute
    after = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(before, after)


@pytest.mark.parametrize(
    "node",
    [
        helper.make_node("Split", ["x"], ["y", "z"], axis=2, num_outputs=2),
        helper.make_node("ReduceMean", ["x", "x_axes"], ["y"]),  # axes computed at run time
        helper.make_node("Pad", ["x", "p", "", "a"], ["y"]),  # uses Pad-18's new axes input
    ],
    ids=["split", "dynamic-axes", "pad-axes"],
)
def test_downgrade_refuses_what_it_cannot_prove_equivalent(node: onnx.NodeProto) -> None:
    with pytest.raises(ExportError, match="opset 17"):
        downgrade_to_opset17(_model([node], []))
