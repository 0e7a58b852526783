"""Streams (Stream2D, Stream3D): bitwise equal to forward_inplace / forward on the
image or volume fed so far, whatever the mix of row() and pixel() calls."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastmdlstm

pytest.importorskip("numba")

DTYPES = [np.float32, np.float64]
VARIANTS = ["slstm", "graves", "halved", "stable"]


def _params(c, n, dtype, ndim=2, seed=1):
    return fastmdlstm.init_params(c, n, seed=seed, dtype=dtype, ndim=ndim)


def _padded(rng, shape, dtype, boundary):
    """forward_inplace's padded h, c (B, *(S+1), N), random boundary states
    when asked (the whole tensor: the interior is overwritten)."""
    if boundary:
        return (rng.standard_normal(shape).astype(dtype),
                rng.standard_normal(shape).astype(dtype))
    return np.zeros(shape, dtype), np.zeros(shape, dtype)


def _feed_2d(stream, x, pattern):
    """Feed x (B, H, W, C) row by row: pattern[i % len] "row" or "pixel"."""
    rows = []
    for i in range(x.shape[1]):
        if pattern[i % len(pattern)] == "row":
            rows.append(stream.row(x[:, i]))
        else:
            rows.append(np.stack([stream.pixel(x[:, i, j]) for j in range(x.shape[2])], 1))
    return np.stack(rows, 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("batch, height, width", [(1, 4, 5), (3, 5, 1), (2, 3, 9)])
@pytest.mark.parametrize("boundary", [False, True])
def test_stream2d_bitwise_forward_inplace(dtype, variant, batch, height, width, boundary):
    rng = np.random.default_rng(batch * 100 + width)
    c, n = 2, 16
    w, b = _params(c, n, dtype)
    x = rng.standard_normal((batch, height, width, c)).astype(dtype)
    h, cc = _padded(rng, (batch, height + 1, width + 1, n), dtype, boundary)
    stream = fastmdlstm.Stream2D(w, b, batch=batch, width=width, variant=variant)
    if boundary:  # left states for the first rows only: the rest are zero
        rows_given = height - 1
        h[:, rows_given + 1:, 0] = 0
        cc[:, rows_given + 1:, 0] = 0
        stream.reset(h[:, 0, 1:], cc[:, 0, 1:], h[:, 1:rows_given + 1, 0],
                     cc[:, 1:rows_given + 1, 0])
    fastmdlstm.forward_inplace(x, w, b, h, cc, variant=variant)
    for pattern in (["row"], ["pixel"], ["pixel", "row"]):
        if pattern != ["row"]:  # the same boundary again
            stream.reset(*((h[:, 0, 1:], cc[:, 0, 1:], h[:, 1:height, 0], cc[:, 1:height, 0])
                           if boundary else ()))
        got = _feed_2d(stream, x, pattern)
        assert got.dtype == dtype and got.shape == (batch, height, width, n)
        assert np.array_equal(got, h[:, 1:, 1:]), pattern
        assert stream.position == (height, 0)
        state = stream.state
        assert np.array_equal(state.h, h[:, height, 1:])
        assert np.array_equal(state.c, cc[:, height, 1:])
        assert (state.row, state.col) == (height, 0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_stream2d_bitwise_forward_zero_boundary(dtype):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 6, 7, 3)).astype(dtype)
    w, b = _params(3, 8, dtype)
    stream = fastmdlstm.Stream2D(w, b, batch=4, width=7, variant="graves")
    got = _feed_2d(stream, x, ["pixel", "row", "row"])
    assert np.array_equal(got, fastmdlstm.forward(x, w, b, variant="graves"))


def test_stream2d_mid_row_state_and_continuation():
    """state in the middle of a row; reset(state.h, state.c) after a whole row
    goes on as if unbroken (with zero left boundary states)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 4, 5, 1)).astype(np.float32)
    w, b = _params(1, 8, np.float32)
    full = fastmdlstm.forward(x, w, b)
    stream = fastmdlstm.Stream2D(w, b, batch=2, width=5)
    stream.row(x[:, 0])
    stream.pixel(x[:, 1, 0])
    stream.pixel(x[:, 1, 1])
    st = stream.state
    assert (st.row, st.col) == (1, 2)
    assert np.array_equal(st.h[:, :2], full[:, 1, :2])  # this row left of col
    assert np.array_equal(st.h[:, 2:], full[:, 0, 2:])  # the row above from col on
    st.h[...] = 7  # a copy
    for j in range(2, 5):
        stream.pixel(x[:, 1, j])
    st = stream.state
    other = fastmdlstm.Stream2D(w, b, batch=2, width=5)
    other.reset(st.h, st.c)
    assert np.array_equal(other.row(x[:, 2]), full[:, 2])
    assert np.array_equal(stream.row(x[:, 2]), full[:, 2])


def test_stream2d_out_buffers_and_aliasing():
    """out is filled and returned; pixel's x may alias its out (feedback)."""
    rng = np.random.default_rng(5)
    n = 4
    w, b = _params(n, n, np.float64)
    x0 = rng.standard_normal((3, n))
    stream = fastmdlstm.Stream2D(w, b, batch=3, width=4)
    out = np.empty((3, n))
    buf = x0.copy()
    expected_stream = fastmdlstm.Stream2D(w, b, batch=3, width=4)
    feed = x0.copy()
    for _ in range(10):  # x = the previous h, in place
        assert stream.pixel(buf, out=buf) is buf
        feed = expected_stream.pixel(feed.copy(), out=out).copy()
        assert np.array_equal(buf, feed)
    row_out = np.empty((3, 4, n))
    stream.reset()
    xr = rng.standard_normal((3, 4, n))
    assert stream.row(xr, out=row_out) is row_out
    assert np.array_equal(row_out, fastmdlstm.forward(xr[:, None], w, b)[:, 0])


def test_stream2d_strided_inputs_and_param_copy():
    rng = np.random.default_rng(6)
    w, b = _params(2, 8, np.float32)
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)[..., ::2]  # strided channels
    stream = fastmdlstm.Stream2D(w, b, batch=2, width=4)
    w[...] = 0  # the stream holds its own copy
    w2, _ = _params(2, 8, np.float32)
    assert np.array_equal(_feed_2d(stream, x, ["pixel", "row"]),
                          fastmdlstm.forward(np.ascontiguousarray(x), w2, b))


def test_stream2d_dtype_casts_parameters():
    w, b = _params(1, 4, np.float64)
    stream = fastmdlstm.Stream2D(w, b, batch=1, width=2, dtype=np.float32)
    x = np.ones((1, 1, 2, 1), np.float32)
    assert stream.dtype == np.float32
    assert np.array_equal(stream.row(x[:, 0]), fastmdlstm.forward(x, w, b)[:, 0])
    big = fastmdlstm.Stream2D(w.astype(">f8"), b, batch=1, width=2)  # non-native: fine
    assert big.dtype == np.float64


def test_stream2d_refuses_row_when_a_row_is_half_done():
    w, b = _params(1, 4, np.float32)
    stream = fastmdlstm.Stream2D(w, b, batch=1, width=3)
    stream.pixel(np.zeros((1, 1), np.float32))
    with pytest.raises(RuntimeError, match="half done.*1 of its 3 pixels"):
        stream.row(np.zeros((1, 3, 1), np.float32))
    assert stream.position == (0, 1)
    stream.pixel(np.zeros((1, 1), np.float32))
    stream.pixel(np.zeros((1, 1), np.float32))
    stream.row(np.zeros((1, 3, 1), np.float32))
    assert stream.position == (2, 0)
    stream.pixel(np.zeros((1, 1), np.float32))
    stream.reset()
    assert stream.position == (0, 0)
    stream.row(np.zeros((1, 3, 1), np.float32))


def test_stream2d_argument_errors():
    w, b = _params(2, 4, np.float32)
    S = fastmdlstm.Stream2D
    with pytest.raises(TypeError, match="batch"):
        S(w, b, batch=True, width=3)
    with pytest.raises(ValueError, match="width"):
        S(w, b, batch=1, width=0)
    with pytest.raises(ValueError, match="variant"):
        S(w, b, batch=1, width=3, variant="lstm")
    with pytest.raises(ValueError, match="one direction"):
        S(np.stack([w[0], w[0]]), np.stack([b[0], b[0]]), batch=1, width=3)
    with pytest.raises(ValueError, match="bias"):
        S(w, b[:, :-1], batch=1, width=3)
    with pytest.raises(ValueError, match="columns"):
        S(w[..., :-1], b, batch=1, width=3)
    with pytest.raises(TypeError, match="dtype"):
        S(w, b, batch=1, width=3, dtype=np.float16)
    with pytest.raises(TypeError, match="subclass"):
        S(np.ma.masked_array(w), b, batch=1, width=3)
    stream = S(w, b, batch=2, width=3)
    with pytest.raises(TypeError, match="x_px must have dtype float32"):
        stream.pixel(np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"x_px must have shape \(2, 2\)"):
        stream.pixel(np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match="x_px must be a numpy.ndarray"):
        stream.pixel([[0.0, 0.0], [0.0, 0.0]])
    with pytest.raises(ValueError, match=r"out must have shape \(2, 4\)"):
        stream.pixel(np.zeros((2, 2), np.float32), out=np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="read-only"):
        ro = np.zeros((2, 4), np.float32)
        ro.flags.writeable = False
        stream.pixel(np.zeros((2, 2), np.float32), out=ro)
    with pytest.raises(ValueError, match=r"x_row must have shape \(2, 3, 2\)"):
        stream.row(np.zeros((2, 4, 2), np.float32))
    x_row = np.zeros((2, 3, 8), np.float32)
    with pytest.raises(ValueError, match="share memory with x_row"):
        stream.row(x_row[..., :2], out=x_row[..., 1:5])
    assert stream.position == (0, 0)  # nothing consumed by failed calls
    with pytest.raises(ValueError, match=r"h0 must have shape \(2, 3, 4\)"):
        stream.reset(np.zeros((2, 2, 4)))
    with pytest.raises(ValueError, match=r"h_left must have shape \(2, R, 4\)"):
        stream.reset(h_left=np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"c_left must have shape \(2, 5, 4\)"):
        stream.reset(h_left=np.zeros((2, 5, 4)), c_left=np.zeros((2, 4, 4)))
    with pytest.raises(TypeError, match="c0"):
        stream.reset(c0=np.zeros((2, 3, 4), np.int64))


# --- 3-D -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "stable"])  # 2-D only
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("boundary", [False, True])
def test_stream3d_bitwise_forward_inplace(dtype, variant, batch, boundary):
    rng = np.random.default_rng(batch)
    d, hh, ww, c, n = 4, 5, 6, 3, 8
    w, b = _params(c, n, dtype, ndim=3)
    x = rng.standard_normal((batch, d, hh, ww, c)).astype(dtype)
    h, cc = _padded(rng, (batch, d + 1, hh + 1, ww + 1, n), dtype, boundary)
    stream = fastmdlstm.Stream3D(w, b, batch=batch, height=hh, width=ww, variant=variant)
    if boundary:  # top states for 2 frames, left ones for 3: the rest are zero
        h[:, 3:, 0, 1:], cc[:, 3:, 0, 1:] = 0, 0
        h[:, 4:, 1:, 0], cc[:, 4:, 1:, 0] = 0, 0
        stream.reset(h[:, 0, 1:, 1:], cc[:, 0, 1:, 1:], h[:, 1:3, 0, 1:], cc[:, 1:3, 0, 1:],
                     h[:, 1:4, 1:, 0], cc[:, 1:4, 1:, 0])
    fastmdlstm.forward_inplace(x, w, b, h, cc, variant=variant)
    got = np.stack([stream.frame(x[:, k]) for k in range(d)], 1)
    assert got.dtype == dtype
    assert np.array_equal(got, h[:, 1:, 1:, 1:])
    st = stream.state
    assert np.array_equal(st.h, h[:, d, 1:, 1:]) and np.array_equal(st.c, cc[:, d, 1:, 1:])
    assert st.row == d
    if not boundary:
        assert np.array_equal(got, fastmdlstm.forward(x, w, b, variant=variant))


def test_stream3d_out_continuation_and_errors():
    rng = np.random.default_rng(7)
    w, b = _params(2, 4, np.float32, ndim=3)
    x = rng.standard_normal((2, 3, 4, 5, 2)).astype(np.float32)
    full = fastmdlstm.forward(x, w, b)
    stream = fastmdlstm.Stream3D(w, b, batch=2, height=4, width=5)
    out = np.empty((2, 4, 5, 4), np.float32)
    assert stream.frame(x[:, 0], out=out) is out
    st = stream.state
    other = fastmdlstm.Stream3D(w, b, batch=2, height=4, width=5)
    other.reset(st.h, st.c)
    assert np.array_equal(other.frame(x[:, 1]), full[:, 1])
    with pytest.raises(ValueError, match=r"x_frame must have shape \(2, 4, 5, 2\)"):
        stream.frame(x[:, 0, :3])
    with pytest.raises(TypeError, match="x_frame must have dtype float32"):
        stream.frame(x[:, 0].astype(np.float64))
    with pytest.raises(ValueError, match="share memory with x_frame"):
        buf = np.zeros((2, 4, 5, 6), np.float32)
        stream.frame(buf[..., :2], out=buf[..., 1:5])
    with pytest.raises(ValueError, match="height"):
        fastmdlstm.Stream3D(w, b, batch=2, height=0, width=5)
    w2, b2 = _params(2, 4, np.float32)
    with pytest.raises(ValueError, match="a 3-D cell needs 6"):  # 2-D weights
        fastmdlstm.Stream3D(w2, b2, batch=2, height=4, width=5)
    assert np.array_equal(stream.frame(x[:, 1]), full[:, 1])


def test_streams_need_numba(tmp_path):
    from test_kernels import BLOCK_NUMBA
    script = BLOCK_NUMBA + textwrap.dedent("""
        import numpy as np
        import fastmdlstm
        w, b = fastmdlstm.init_params(1, 2, seed=0)
        try:
            fastmdlstm.Stream2D(w, b, batch=1, width=2)
        except RuntimeError as err:
            assert "numba" in str(err)
        else:
            raise AssertionError("a stream without numba")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=dict(os.environ), timeout=120)
    assert result.returncode == 0, result.stderr


def test_example_runs():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, os.path.join(root, "examples",
                                                          "sample_autoregressive.py")],
                            capture_output=True, text=True, env=dict(os.environ), timeout=300)
    assert result.returncode == 0, result.stderr
