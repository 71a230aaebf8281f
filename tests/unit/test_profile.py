"""`edgevl profile` on a real export of the default model (ONNX Runtime and OpenVINO, fp32 text
tower), run through the real CLI: the three reports, profile.json's consistency, the plots, the
FLOP counter against hand-computed graphs, the slower-than-fp32 flags, and bad input. No latency
is asserted (machines are noisy)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgevl.cli import main
from edgevl.profile.flops import attention_flops, conv_flops, count_onnx, matmul_flops
from edgevl.profile.html import PLOT_IDS
from edgevl.profile.machine import PEAK_FILE, CpuInfo, cpu_info
from edgevl.profile.measure import plan
from edgevl.profile.verdicts import flag_slower

pytestmark = pytest.mark.slow  # one real export (two targets) and one profile run


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("profile") / "export"
    code, stdout, err = _run(["export", "--target", "onnx,openvino", "--components", "text", "--out", str(out),
                              "--profile", "0.2", "-q"])
    assert code == 0, err
    assert "[1/2]" not in err and "GEMM peak" not in err and "p50 ms" in stdout  # -q: no progress lines; the table prints
    return out


@pytest.fixture(scope="module")
def profiled(export_dir, tmp_path_factory) -> dict:
    reports = tmp_path_factory.mktemp("profile") / "reports"
    code, stdout, stderr = _run(["profile", str(export_dir), "--budget", "0.4", "--out", str(reports)])
    assert code == 0, stderr
    return {"out": reports, "stdout": stdout, "stderr": stderr,
            "profile": json.loads((reports / "profile.json").read_text())}


def test_writes_the_three_reports_and_the_terminal_table(profiled, export_dir):
    out = profiled["out"]
    assert sorted(p.name for p in out.iterdir()) == ["profile.json", "report.html", "report.md"]
    assert json.loads((export_dir / "profile.json").read_text())["settings"]["budget_s"] == 0.2  # from export --profile
    table = profiled["stdout"]
    assert "p50 ms" in table and "text onnx fp32" in table and "text openvino fp32" in table
    # One progress line per artifact on stderr, none on stdout.
    assert profiled["stderr"].count("[1/2]") == 1 and profiled["stderr"].count("[2/2]") == 1
    assert "| artifact |" in (out / "report.md").read_text()


def test_every_artifact_is_profiled_with_consistent_figures(profiled, export_dir):
    profile = profiled["profile"]
    manifest = json.loads((export_dir / "manifest.json").read_text())
    assert [a["path"] for a in profile["artifacts"]] == [a["path"] for a in manifest["artifacts"]]
    assert profile["peak"]["fp32_flops_per_s"] > 0 and profile["machine"]["usable_cores"] >= 1
    for a in profile["artifacts"]:
        assert a["status"] == "measured", a["reason"]
        lat = a["latency"]
        assert 0 < lat["p50_s"] <= lat["p90_s"] <= lat["p99_s"] and lat["runs"] >= 3
        assert lat["batch"] == 1 and lat["seq"] == 32  # the default model's context length
        assert a["int8_nodes"] == 0  # fp32 graphs
        assert a["flops"] > 0 and a["peak_rss_bytes"] > 0 and a["load_s"] > 0 and a["process_threads"] >= 1
        assert 0 < a["achieved_flops_per_s"] <= a["peak_flops_per_s"] and a["peak_kind"] == "fp32"
        assert a["achieved_flops_per_s"] == pytest.approx(a["flops"] / lat["p50_s"])
        timed = {(c["batch"], c["seq"]) for c in a["configs"] if "p50_s" in c}
        assert timed == {(1, 32), (1, 16), (8, 32), (8, 16)}
        assert a["parity"]["cosine_min"] == next(m for m in manifest["artifacts"] if m["path"] == a["path"])["parity"]["cosine_min"]
    onnx, openvino = (next(a for a in profile["artifacts"] if a["target"] == t) for t in ("onnx", "openvino"))
    # Two graphs of one tower, counted by two readers (ONNX and OpenVINO IR), give the same FLOPs.
    assert openvino["flops"] == pytest.approx(onnx["flops"], rel=0.01)
    assert openvino["runtime_options"] == {"INFERENCE_PRECISION_HINT": "f32"}


def test_export_profile_folds_the_summary_into_the_manifest(export_dir):
    manifest = json.loads((export_dir / "manifest.json").read_text())
    profile = json.loads((export_dir / "profile.json").read_text())
    summary = manifest["profile"]
    assert summary["report"] == "profile.json" and summary["peak_fp32_flops_per_s"] == profile["peak"]["fp32_flops_per_s"]
    assert set(summary["artifacts"]) == {a["path"] for a in manifest["artifacts"]}
    for a in profile["artifacts"]:
        assert summary["artifacts"][a["path"]]["p50_s"] == a["latency"]["p50_s"] > 0
    assert {p.name for p in export_dir.iterdir()} >= {"report.md", "report.html"}
    assert not [p.name for p in export_dir.iterdir() if "edgevl-tmp" in p.name]


def test_html_is_self_contained_with_one_svg_per_plot(profiled):
    html = (profiled["out"] / "report.html").read_text()
    assert html.count("<svg") == len(PLOT_IDS)
    for plot_id in PLOT_IDS:
        assert f'id="{plot_id}"' in html
    assert "<script" not in html and "src=" not in html and "href=" not in html and "@import" not in html
    import re
    import xml.etree.ElementTree as ET

    for svg in re.findall(r"<svg .*?</svg>", html, re.S):  # each plot is well-formed SVG with marks drawn
        root = ET.fromstring(svg)
        marks = [e for e in root.iter() if e.tag.rsplit("}", 1)[-1] in ("rect", "circle")]
        assert marks, root.get("id")


def test_peak_is_cached_with_the_cpu_facts(profiled, edgevl_cache):
    cached = json.loads((edgevl_cache / PEAK_FILE).read_text())
    cpu = cpu_info()
    entry = cached[cpu.key]
    assert entry["cpu"]["model"] == cpu.model and entry["cpu"]["flags"] == list(cpu.flags)
    assert entry["peak"]["fp32"] == profiled["profile"]["peak"]["fp32_flops_per_s"]


def test_an_artifact_without_its_sdk_here_is_listed_with_the_reason(export_dir):
    manifest = json.loads((export_dir / "manifest.json").read_text())
    manifest["artifacts"].append(dict(manifest["artifacts"][0], target="tensorrt", path="tensorrt/fp32/text.plan"))
    plans = plan(export_dir, manifest)
    assert [p.runtime for p in plans] == ["onnxruntime", "openvino", None]
    assert "no SDK on this machine" in plans[-1].reason


def test_flop_formulas():
    assert matmul_flops([2, 5, 3], [3, 4]) == 2 * 2 * 5 * 3 * 4
    assert matmul_flops([4, 3], [5, 3], transpose_b=True) == 2 * 4 * 3 * 5
    assert conv_flops([8, 3, 3, 3], [1, 8, 10, 10]) == 2 * 8 * 100 * 3 * 9
    assert attention_flops(1, 2, 7, 7, 4) == 2 * 2 * 7 * 7 * (4 + 4)


def test_count_onnx_counts_a_handmade_graph_with_a_dynamic_batch(tmp_path):
    from onnx import TensorProto, helper, numpy_helper, save

    w = numpy_helper.from_array(np.ones((6, 5), np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"]), helper.make_node("Relu", ["h"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4, 5])], [w])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    count = count_onnx(tmp_path / "m.onnx", {"x": [3, 4, 6]})
    assert count.total == 2 * 3 * 4 * 6 * 5 and count.by_op == {"MatMul": count.total} and not count.uncounted


def _record(precision: str, p50: float) -> dict:
    return {"target": "openvino", "component": "text", "precision": precision, "path": f"{precision}.xml",
            "latency": {"p50_s": p50}}


@pytest.mark.parametrize("flags,expected", [(("avx2", "fma"), "without VNNI/AMX"),
                                            (("avx2", "avx512_vnni"), "overhead (quantize/dequantize)")])
def test_slower_int8_is_flagged_with_the_likely_reason(flags, expected):
    cpu = CpuInfo(model="test cpu", flags=flags, logical_cores=2, usable_cores=2, mhz=None)
    records = [_record("fp32", 0.010), _record("int8", 0.018), _record("int8w", 0.009)]
    flag_slower(records, cpu)
    fp32, int8, int8w = records
    assert fp32["slower_than_fp32"] is None and int8w["slower_than_fp32"] is None
    assert int8["slower_than_fp32"]["ratio"] == pytest.approx(1.8) and expected in int8["slower_than_fp32"]["reason"]
    assert int8["slower_than_fp32"]["sibling"] == "fp32.xml" and not int8["slower_than_fp32"]["within_noise"]


def test_a_slower_int8_artifact_without_int8_nodes_is_told_apart():
    cpu = CpuInfo(model="test cpu", flags=("avx2",), logical_cores=2, usable_cores=2, mhz=None)
    records = [_record("fp32", 0.010), dict(_record("int8", 0.012), int8_nodes=0)]
    flag_slower(records, cpu)
    assert "holds no low-precision node" in records[1]["slower_than_fp32"]["reason"]


def test_missing_folder_is_one_line_error(tmp_path):
    code, _, err = _run(["profile", str(tmp_path / "nope")])
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "does not exist" in err and "edgevl export --out" in err


def test_folder_without_manifest_is_refused_and_nothing_written(tmp_path):
    code, _, err = _run(["profile", str(tmp_path)])
    assert code == 2 and "has no manifest.json" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_unreadable_manifest_is_refused_and_nothing_written(tmp_path, export_dir):
    folder = tmp_path / "broken"
    shutil.copytree(export_dir, folder)
    (folder / "manifest.json").write_text('{"artifacts": [')
    before = sorted(p.name for p in folder.iterdir())
    code, _, err = _run(["profile", str(folder), "--budget", "0.1"])
    assert code == 2 and "manifest.json cannot be read" in err and "re-run `edgevl export`" in err
    assert sorted(p.name for p in folder.iterdir()) == before


@pytest.mark.parametrize("argv,needle", [(["--budget", "0"], "outside (0, 3600]"), (["--batch", "1,x"], "bad batch sizes")])
def test_bad_options_are_one_line_errors(tmp_path, argv, needle):
    code, _, err = _run(["profile", str(tmp_path), *argv])
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_report_opens_in_headless_chromium_with_its_plots(profiled, tmp_path):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed on this machine (apt-get install chromium)")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": 900, "height": 900})
        page.goto((profiled["out"] / "report.html").as_uri())
        for plot_id in PLOT_IDS:
            box = page.locator(f"#{plot_id}").bounding_box()
            assert box is not None and box["width"] > 100 and box["height"] > 50
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"))
    assert pixels.std() > 5  # not a blank page


def test_child_peak_rss_is_its_own_not_its_parents():
    """ru_maxrss survives exec on Linux: a child of a large parent would report the parent's peak."""
    import subprocess
    import sys

    ballast = np.ones(400 * 2**20, dtype=np.uint8)  # 400 MiB resident in this process
    code = "from edgevl.profile.child import peak_rss_bytes; print(peak_rss_bytes())"
    peak = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert ballast.sum() > 0 and peak < 200 * 2**20
