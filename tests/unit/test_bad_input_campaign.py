

@pytest.mark.slow
def test_pinned_static_sizes_run_and_refuse_other_sizes(tiny_clip_dir, tmp_path):
    """A quantized artifact is built on the dynamic graph and its --static-shapes sizes pinned
    afterwards: the pinned graph runs at those sizes in ONNX Runtime, equal to the dynamic one,
    and refuses any other batch."""
    import numpy as np
    import onnxruntime as ort

    from edgevl.exporters.onnx import export_tower_onnx, pin_static_dims
    from edgevl.models.spec import LoadOptions
    from edgevl.registry import MODELS

    spec = MODELS.get("hf-clip")(str(tiny_clip_dir), LoadOptions())
    path = tmp_path / "text.onnx"
    export_tower_onnx(spec.text, path)
    dynamic = ort.InferenceSession(str(path))
    pinned_sizes = pin_static_dims(path, spec.text, {"batch": 2, "seq": 16})
    assert pinned_sizes == {"batch": 2, "seq": 16}
    pinned = ort.InferenceSession(str(path))
    assert [i.shape for i in pinned.get_inputs()] == [[2, 16], [2, 16]]
    assert pinned.get_outputs()[0].shape[0] == 2
    feeds = {k: v.numpy()[:2] for k, v in spec.text.example_inputs.items()}
    np.testing.assert_allclose(pinned.run(None, feeds)[0], dynamic.run(None, feeds)[0], atol=1e-6)
    with pytest.raises(Exception, match="input_ids"):
        pinned.run(None, {k: np.concatenate([v, v[:1]]) for k, v in feeds.items()})
