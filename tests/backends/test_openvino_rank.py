"""OpenVINO int8 of a transformer tower: the order in which the accuracy gate keeps layers float
(`openvino_quant.rank_layers`: FFN down-projections first, then the head, the attention ops and the
rest) and the SmoothQuant alpha the command line's int8 uses (measured in
docs/compression-and-gate.md), on the tiny SigLIP's real IR (its FFNs run OpenVINO's Gelu)."""

from __future__ import annotations

import pytest

pytest.importorskip("openvino")

from edgevl.exporters.base import ExportOptions  # noqa: E402
from edgevl.exporters.openvino_ir import convert_tower  # noqa: E402
from edgevl.exporters.openvino_quant import (  # noqa: E402
    TRANSFORMER_SMOOTH_ALPHA, Int8Settings, rank_layers, weight_matmuls,
)
from edgevl.models.hf_clip import load_hf_clip  # noqa: E402
from edgevl.models.spec import LoadOptions  # noqa: E402


def test_text_tower_ranks_ffn_down_projections_first(tiny_siglip_dir):
    spec = load_hf_clip(str(tiny_siglip_dir), LoadOptions())
    model = convert_tower(spec.tower("text"))
    ranked = rank_layers(model, transformer=True)
    matmuls = weight_matmuls(model)
    attention = [op.get_friendly_name() for op in model.get_ordered_ops()
                 if op.get_type_name() == "ScaledDotProductAttention"]
    downs = [op.get_friendly_name() for op in matmuls
             if op.input_value(0).get_node().get_type_name() == "Gelu"]
    assert downs and len(ranked) == len(matmuls) + len(attention)
    names = [name for name, _ in ranked]
    assert names[: len(downs)] == downs
    assert all("FFN down-projection" in why for _, why in ranked[: len(downs)])
    # The attention ops follow the head and come before the remaining MatMuls.
    first_attention = names.index(attention[0])
    assert set(names[first_attention : first_attention + len(attention)]) == set(attention)


def test_command_line_int8_smooths_with_the_measured_alpha():
    settings = Int8Settings.of(None, ExportOptions(precision="int8"))
    assert settings.smooth_alpha == TRANSFORMER_SMOOTH_ALPHA == 0.8
