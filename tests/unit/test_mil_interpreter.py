"""edgevl's Core ML reference interpreter, op by op: each kernel against coremltools' own numpy
`value_inference` (or `materialized_val_inference` for the weight-decompression ops) on random
inputs; `conv` and `scaled_dot_product_attention`, which have none, against PyTorch; fp16
rounding and overflow; an op without a kernel is an error naming it."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("coremltools")

from coremltools.converters.mil import Builder as mb  # noqa: E402
from coremltools.converters.mil.mil import types  # noqa: E402

from edgevl.runtimes.mil_interpreter import MilInterpreter, UnsupportedOpError, execute_op  # noqa: E402

RNG = np.random.default_rng(0)


def _ios18():  # noqa: ANN202
    import coremltools as ct

    return ct.target.iOS18


def _f(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _ops_built(build) -> list:
    """The ops `build()` adds to a program of constants (coremltools infers their values)."""
    made = []

    @mb.program(input_specs=[], opset_version=_ios18())
    def prog():  # noqa: ANN202 - coremltools' builder signature
        out = build()
        made.extend(out if isinstance(out, (list, tuple)) else [out])
        return out

    return made


CASES = {
    "add": lambda: mb.add(x=_f(2, 3, 4), y=_f(4)),
    "sub": lambda: mb.sub(x=_f(2, 3), y=_f(2, 3)),
    "mul": lambda: mb.mul(x=_f(3, 1), y=_f(1, 5)),
    "real_div": lambda: mb.real_div(x=_f(3, 4), y=np.abs(_f(3, 4)) + 0.5),
    "maximum": lambda: mb.maximum(x=_f(6), y=np.float32(0.1)),
    "transpose": lambda: mb.transpose(x=_f(2, 3, 4), perm=[2, 0, 1]),
    "reshape": lambda: mb.reshape(x=_f(2, 3, 4), shape=[-1, 4]),
    "concat": lambda: mb.concat(values=[_f(2, 3), _f(2, 5)], axis=1),
    "slice_by_index": lambda: mb.slice_by_index(x=_f(4, 6, 5), begin=[1, 0, 2], end=[3, 6, 5], stride=[1, 2, 1],
                                                end_mask=[False, True, False], squeeze_mask=[False, False, False]),
    "gather": lambda: mb.gather(x=_f(7, 3), indices=np.array([[0, 6], [-1, 2]], np.int32), axis=0),
    "gather_along_axis": lambda: mb.gather_along_axis(x=_f(3, 5), indices=np.array([[0, 4], [1, -1], [2, 3]], np.int32),
                                                      axis=1),
    "tile": lambda: mb.tile(x=_f(2, 3), reps=[2, 1]),
    "select": lambda: mb.select(cond=_f(3, 4) > 0, a=_f(3, 4), b=_f(3, 4)),
    "expand_dims": lambda: mb.expand_dims(x=_f(3, 4), axes=[0, -1]),
    "squeeze": lambda: mb.squeeze(x=_f(3, 1, 4, 1), axes=[1]),
    "cast": lambda: mb.cast(x=_f(5) * 10, dtype="int32"),
    "range_1d": lambda: mb.range_1d(start=np.int32(2), end=np.int32(11), step=np.int32(3)),
    "sigmoid": lambda: mb.sigmoid(x=_f(10)),
    "tanh": lambda: mb.tanh(x=_f(10)),
    "gelu_exact": lambda: mb.gelu(x=_f(10), mode="EXACT"),
    "gelu_tanh": lambda: mb.gelu(x=_f(10), mode="TANH_APPROXIMATION"),
    "softmax": lambda: mb.softmax(x=_f(3, 7), axis=-1),
    "clip": lambda: mb.clip(x=_f(20) * 8, alpha=np.float32(0.0), beta=np.float32(6.0)),
    "pad": lambda: mb.pad(x=_f(1, 2, 3, 3), pad=[0, 1, 1, 0], mode="constant", constant_val=np.float32(0.0)),
    "reduce_sum": lambda: mb.reduce_sum(x=_f(3, 4, 5), axes=[-1], keep_dims=False),
    "reduce_mean": lambda: mb.reduce_mean(x=_f(2, 3, 4, 4), axes=[2, 3], keep_dims=True),
    "reduce_l2_norm": lambda: mb.reduce_l2_norm(x=_f(3, 8), axes=[-1], keep_dims=True),
    "stack": lambda: mb.stack(values=[_f(2, 3), _f(2, 3)], axis=2),
    "split": lambda: mb.split(x=_f(4, 6), split_sizes=[2, 4], axis=1),
    "linear": lambda: mb.linear(x=_f(2, 5), weight=_f(3, 5), bias=_f(3)),
    "matmul": lambda: mb.matmul(x=_f(2, 3, 4), y=_f(2, 5, 4), transpose_y=True),
    # A stack times one matrix: computed as one 2-D product (`_flat_matmul`).
    "linear_stacked": lambda: mb.linear(x=_f(2, 3, 5), weight=_f(4, 5), bias=_f(4)),
    "matmul_stacked": lambda: mb.matmul(x=_f(2, 3, 4), y=_f(5, 4), transpose_y=True),
    "layer_norm": lambda: mb.layer_norm(x=_f(2, 3, 8), axes=[-1], gamma=_f(8), beta=_f(8), epsilon=np.float32(1e-5)),
    "shape": lambda: mb.shape(x=_f(2, 3, 5)),
    "equal": lambda: mb.equal(x=np.array([1, 2, 3], np.int32), y=np.array([1, 0, 3], np.int32)),
    "logical_and": lambda: mb.logical_and(x=_f(6) > 0, y=_f(6) > 0),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_kernel_matches_coremltools_value_inference(case):
    outputs = _ops_built(CASES[case])
    op = outputs[0].op
    expected = [v.val for v in op.outputs]
    assert all(e is not None for e in expected), f"{op.op_type} has no value_inference here"
    got = execute_op(op, {})
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        e = np.asarray(e)
        assert g.shape == e.shape, (g.shape, e.shape)
        np.testing.assert_allclose(g.astype(np.float64), e.astype(np.float64), rtol=2e-5, atol=2e-6)


def test_gather_nd_picks_the_indexed_rows():
    """gather_nd has no value_inference: each index row addresses x's leading axes."""
    x = _f(4, 5, 3)
    out = next(iter(MilInterpreter(_program(
        lambda x_: mb.gather_nd(x=x_, indices=np.array([[0, 1], [3, 4]], np.int32)), x.shape)).run({"x_": x}).values()))
    np.testing.assert_array_equal(out, np.stack([x[0, 1], x[3, 4]]))


def test_decompression_kernels_match_materialized_values():
    for var in _compression_ops_ios18():
        expected = var.op.materialized_val_inference()
        (got,) = execute_op(var.op, {})
        assert got.dtype == np.float16 and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected.astype(np.float16))


def _compression_ops_ios18() -> list:
    made = []
    data = RNG.integers(-128, 127, size=(8, 6)).astype(np.int8)
    indices = RNG.integers(0, 16, size=(8, 6)).astype(types.np_uint4_dtype)
    lut = _f(2, 1, 16, 1).astype(np.float16)

    @mb.program(input_specs=[], opset_version=_ios18())
    def prog():  # noqa: ANN202
        made.append(mb.constexpr_blockwise_shift_scale(data=data, scale=np.abs(_f(4, 1)).astype(np.float16),
                                                       offset=RNG.integers(-3, 3, size=(4, 1)).astype(np.int8)))
        made.append(mb.constexpr_lut_to_dense(indices=indices, lut=lut))
        return mb.add(x=made[0], y=made[1])

    return made


def _program(build, *specs):  # noqa: ANN001, ANN202
    return mb.program(input_specs=[mb.TensorSpec(shape=s) for s in specs], opset_version=_ios18())(build)


@pytest.mark.parametrize("kernel", ["torch", "numpy"])
@pytest.mark.parametrize("pad_type,stride,groups", [
    ("valid", 1, 1), ("same", 2, 1), ("custom", 1, 2), ("same", 1, 4), ("same", 2, 4),
])
def test_conv_matches_pytorch(pad_type, stride, groups, kernel, monkeypatch):
    """`conv` has no value_inference: PyTorch's conv2d is the reference (TF-style "same" padding
    puts the odd pixel after, which PyTorch expresses as an explicit asymmetric pad). The
    interpreter pads and strides as the program says, then runs PyTorch's kernel, or its own numpy
    kernel where torch is not installed: both are checked."""
    import torch
    import torch.nn.functional as F

    from edgevl.runtimes import mil_nn

    if kernel == "numpy":
        monkeypatch.setattr(mil_nn, "_torch_conv2d", lambda: None)
    x, w, bias = _f(2, 4, 9, 8), _f(8, 4 // groups, 3, 3), _f(8)
    pad = [1, 0, 0, 2] if pad_type == "custom" else [0, 0, 0, 0]
    prog = _program(lambda x_: mb.conv(x=x_, weight=w, bias=bias, strides=[stride, stride], pad_type=pad_type,
                                       pad=pad, groups=groups), x.shape)
    got = MilInterpreter(prog).run({"x_": x})
    out = next(iter(got.values()))
    xt = torch.from_numpy(x)
    if pad_type == "same":
        def total(n):  # noqa: ANN001, ANN202
            return max((-(-n // stride) - 1) * stride + 3 - n, 0)
        th, tw = total(9), total(8)
        xt = F.pad(xt, [tw // 2, tw - tw // 2, th // 2, th - th // 2])
    elif pad_type == "custom":
        xt = F.pad(xt, [pad[2], pad[3], pad[0], pad[1]])
    ref = F.conv2d(xt, torch.from_numpy(w), torch.from_numpy(bias), stride=stride, groups=groups).numpy()
    assert out.shape == ref.shape
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("masked", [False, True])
def test_attention_matches_pytorch_sdpa(masked):
    import torch
    import torch.nn.functional as F

    q, k, v = _f(2, 3, 5, 8), _f(2, 3, 6, 8), _f(2, 3, 6, 4)
    mask = np.where(_f(2, 1, 5, 6) > 0.5, -3e4, 0.0).astype(np.float32)
    prog = _program(lambda q_, k_, v_: mb.scaled_dot_product_attention(
        query=q_, key=k_, value=v_, attn_mask=mask if masked else None), q.shape, k.shape, v.shape)
    out = next(iter(MilInterpreter(prog).run({"q_": q, "k_": k, "v_": v}).values()))
    ref = F.scaled_dot_product_attention(*(torch.from_numpy(t) for t in (q, k, v)),
                                         attn_mask=torch.from_numpy(mask) if masked else None).numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_fp16_program_rounds_each_op_and_overflows_past_65504():
    def build(x_):  # noqa: ANN001, ANN202
        h = mb.cast(x=x_, dtype="fp16")
        big = mb.mul(x=h, y=np.float16(1000.0))
        return mb.cast(x=mb.mul(x=big, y=np.float16(0.001)), dtype="fp32")

    x = np.array([[1.0 / 3, 10.0, 70.0]], np.float32)
    out = next(iter(MilInterpreter(_program(build, x.shape)).run({"x_": x}).values()))
    third = np.float16(np.float16(np.float16(1.0 / 3) * np.float16(1000.0)) * np.float16(0.001))
    assert out[0, 0] == np.float32(third) and out[0, 0] != np.float32(1.0 / 3)
    assert abs(out[0, 1] - 10.0) < 0.01
    assert np.isinf(out[0, 2]), "70 * 1000 exceeds fp16's 65504 and must become inf"


def test_an_op_without_a_kernel_is_an_error_naming_it():
    prog = _program(lambda x_: mb.cumsum(x=x_, axis=0), (3, 4))
    with pytest.raises(UnsupportedOpError, match="'cumsum'"):
        MilInterpreter(prog).run({"x_": _f(3, 4)})
