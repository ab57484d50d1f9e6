"""The ONNX Runtime session config an INT8 file asks for: recorded by PTQ where this host's default session does not
compute the file, honoured by the benchmark, named by the bundle's model card (edgedistill.ort_session)."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_models
import pytest

from edgedistill import bench
from edgedistill._machine import int8_dot_exact
from edgedistill.bundle import write_bundle
from edgedistill.ort_session import METADATA_KEY, PRECISE_INT8, required_config, session_options
from edgedistill.quant.ptq import quantize_int8, require_precise_session
from edgedistill.recipe import PTQConfig
from edgedistill.verify import model_session


@pytest.fixture(scope="module")
def int8_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("ort_session")
    fp32 = onnx_models.conv(d / "conv.onnx", channels=8, size=8)
    x = np.random.default_rng(0).normal(size=(64, 1, 8, 8)).astype(np.float32)
    meta = quantize_int8(fp32, d / "int8.onnx", x, PTQConfig())
    return d, d / "int8.onnx", meta, x


def test_session_options_carry_the_config_and_the_graph_switch():
    import onnxruntime as ort

    opts = session_options(2, graph_arithmetic=True, config=PRECISE_INT8)
    assert opts.get_session_config_entry("session.x64quantprecision") == "1" and opts.intra_op_num_threads == 2
    assert opts.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert session_options().graph_optimization_level != ort.GraphOptimizationLevel.ORT_DISABLE_ALL


def test_edgedistill_sessions_compute_the_int8_file(int8_file):
    """PTQ's record: edgedistill's precise session against the graph's own arithmetic; ONNX Runtime's default
    session beside it only where the kernels may saturate (x86 without VNNI), and the file asks for the precise
    session exactly when the default one disagreed with it on more than 1 % of the samples."""
    _, path, meta, x = int8_file
    k = meta["kernels_vs_graph"]
    assert k["samples"] == 64 and k["top1_agreement"] >= 0.99
    assert ("default_session" in k) == (not int8_dot_exact())
    needs = "default_session" in k and k["default_session"]["top1_agreement_with_precise"] < 0.99
    assert meta["ort_session_config"] == required_config(path) == (PRECISE_INT8 if needs else {})
    graph = model_session(path, graph_arithmetic=True).run(None, {"x": x})[0]
    got = model_session(path).run(None, {"x": x})[0]
    assert np.mean(got.argmax(1) == graph.argmax(1)) >= 0.99


def test_the_file_records_the_config_only_when_the_default_session_disagrees(int8_file, tmp_path):
    _, path, _, _ = int8_file
    for agreement, want in ((0.5, PRECISE_INT8), (0.995, {})):
        copy = tmp_path / f"{agreement}.onnx"
        copy.write_bytes(path.read_bytes())
        kernels = {"samples": 8, "top1_agreement": 1.0,
                   "default_session": {"top1_agreement": 0.9, "top1_agreement_with_precise": agreement}}
        assert require_precise_session(copy, kernels) == want == required_config(copy)
    assert require_precise_session(copy, {"samples": 8, "top1_agreement": 1.0}) == {}  # a VNNI / Arm host: no record


def _marked(src, dst):
    from edgedistill.ort_session import set_required_config_

    model = onnx.load(str(src))
    set_required_config_(model, PRECISE_INT8)
    onnx.save(model, str(dst))
    return dst


def test_bench_opens_each_file_in_the_config_it_asks_for(int8_file):
    d, path, _, _ = int8_file
    marked = _marked(path, d / "marked.onnx")
    r = bench.benchmark([str(d / "conv.onnx"), str(marked)], runs=10, warmup=1, min_seconds=0.02)
    assert [m["session_config"] for m in r["models"]] == [{}, PRECISE_INT8]  # read back from the worker's session


def test_bundle_card_names_the_session_config(int8_file):
    d, path, _, _ = int8_file
    out = d / "bundle"
    write_bundle(_marked(path, d / "marked_b.onnx"), out, metadata={"name": "conv-int8"}, model_card={})
    card = (out / "MODEL_CARD.md").read_text()
    assert "## ONNX Runtime session" in card and "session.x64quantprecision = 1" in card
    props = {p.key: p.value for p in onnx.load(str(out / "model.onnx")).metadata_props}
    assert required_config(out / "model.onnx") == PRECISE_INT8 and METADATA_KEY in props
    write_bundle(d / "conv.onnx", d / "plain", metadata={"name": "conv"}, model_card={})
    assert "## ONNX Runtime session" not in (d / "plain" / "MODEL_CARD.md").read_text()
