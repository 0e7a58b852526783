"""Streams (issue 12): the per-call overhead of Stream2D.pixel and an autoregressive
pass, pixel at a time, against the same loop over fastmdlstm.forward_inplace and over
PyTorch.

Configuration: B = 16, N = 64, C = 1, float32, "slstm", images 256 pixels wide.

- group "stream-row": one row of 256 pixels of every sample, fed as one `row` call
  (impl "row": the arithmetic, a compiled loop over the pixels), as 256 `pixel` calls
  into a preallocated out (impl "pixel") and as 256 `pixel` calls that allocate their
  out (impl "pixel-alloc"). (pixel - row) / 256 is the overhead of a pixel call.
- group "stream-autoregressive": a 256x256 pass where each pixel's input is taken from
  the previous pixel's h (x = h[:, :C], copied into the input buffer): impl "stream"
  (Stream2D.pixel into one preallocated out), "forward_inplace" (one forward_inplace
  call per pixel on a 1x1 image, its h and c the pixel's 2x2 window of two rolling rows
  of padded states: bitwise the same h, checked; "forward_inplace-1t" with one numba
  thread: B = 16 makes the dispatcher pick the batch driver, and a parallel region per
  pixel is slow on a shared machine), "torch"
  (the step as a strong PyTorch user writes it: two addmm into a preallocated
  pre-activation, one sigmoid over the four sigmoid gates, out= and in-place ops on
  views of a row of state slots, inference mode).

Smoke mode (--benchmark-disable): each runs once, the pass on an 8x8 image.
"""

import numpy as np
import pytest

import fastmdlstm

B, N, C, WIDTH = 16, 64, 1, 256
DTYPE = np.float32


def _params():
    return fastmdlstm.init_params(C, N, seed=0, dtype=DTYPE)


def _size(benchmark):
    return 8 if benchmark.disabled else 256


# --- the overhead of a pixel call --------------------------------------------------


@pytest.mark.parametrize("impl", ["row", "pixel", "pixel-alloc"])
def test_stream_row(run_bench, impl):
    weights, bias = _params()
    stream = fastmdlstm.Stream2D(weights, bias, batch=B, width=WIDTH)
    x_row = np.random.default_rng(0).random((B, WIDTH, C), dtype=DTYPE)
    out_row = np.empty((B, WIDTH, N), DTYPE)
    x_px = np.ascontiguousarray(x_row[:, 0])
    out_px = np.empty((B, N), DTYPE)
    pixel = stream.pixel

    def feed_row():
        stream.row(x_row, out_row)

    def feed_pixels():
        for _ in range(WIDTH):
            pixel(x_px, out_px)

    def feed_pixels_alloc():
        for _ in range(WIDTH):
            pixel(x_px)

    fn = {"row": feed_row, "pixel": feed_pixels, "pixel-alloc": feed_pixels_alloc}[impl]
    run_bench(fn, group="stream-row", flops=2 * B * WIDTH * (C + 2 * N) * 5 * N,
              impl=impl, config="stream-row", pixels=WIDTH, dtype="float32")


# --- an autoregressive pass ----------------------------------------------------------


def stream_pass(weights, bias, size):
    """h (B, N) of the last pixel: each pixel's input is the h[:, :C] before it."""
    stream = fastmdlstm.Stream2D(weights, bias, batch=B, width=size)
    x = np.zeros((B, C), DTYPE)
    h = np.empty((B, N), DTYPE)
    pixel = stream.pixel
    for _ in range(size * size):
        pixel(x, h)
        x[:] = h[:, :C]
    return h


def inplace_pass(weights, bias, size):
    """The same with one forward_inplace call per pixel: two rolling rows of padded
    states (B, 2, size + 1, N), the pixel's 2x2 window of them as h and c."""
    h = np.zeros((B, 2, size + 1, N), DTYPE)
    c = np.zeros_like(h)
    x = np.zeros((B, 1, 1, C), DTYPE)
    for _ in range(size):
        for j in range(size):
            fastmdlstm.forward_inplace(x, weights, bias, h[:, :, j:j + 2], c[:, :, j:j + 2])
            x[:, 0, 0] = h[:, 1, j + 1, :C]
        h[:, 0] = h[:, 1]
        c[:, 0] = c[:, 1]
    return h[:, 0, size]


def torch_pass_factory(weights, bias, size):
    """The same loop in eager PyTorch, one step per pixel."""
    import torch
    w = torch.from_numpy(weights[0])
    # Rows [x | h_left | h_up] (slots j, j + 1 of the row of states are adjacent) and
    # forget gates (f_col, f_row), to match the slots' order (left, up).
    w_x = w[:C].contiguous()
    w_h = torch.cat([w[C + N:], w[C:C + N]]).contiguous()
    cols = torch.cat([torch.arange(3 * N), torch.arange(4 * N, 5 * N),
                      torch.arange(3 * N, 4 * N)])
    w_x, w_h = w_x[:, cols].contiguous(), w_h[:, cols].contiguous()
    b = torch.from_numpy(bias[0])[cols].contiguous()

    def run():
        with torch.inference_mode():
            hs = torch.zeros(B, size + 1, N)  # slot 0: the left boundary, slot j + 1: column j
            cs = torch.zeros(B, size + 1, N)
            x = torch.zeros(B, C)
            pre = torch.empty(B, 5 * N)
            sig = torch.empty(B, 4 * N)
            g = torch.empty(B, N)
            fc = torch.empty(B, 2, N)
            out_gate, in_gate = sig[:, :N], sig[:, N:2 * N]
            forget = sig[:, 2 * N:].view(B, 2, N)
            for _ in range(size):
                for j in range(size):
                    torch.addmm(b, x, w_x, out=pre)
                    pre.addmm_(hs[:, j:j + 2].reshape(B, 2 * N), w_h)
                    torch.sigmoid(pre[:, N:], out=sig)
                    torch.tanh(pre[:, :N], out=g)
                    torch.mul(forget, cs[:, j:j + 2], out=fc)
                    c_new, h_new = cs[:, j + 1], hs[:, j + 1]
                    torch.addcmul(fc[:, 0], g, in_gate, out=c_new)
                    c_new.add_(fc[:, 1])
                    torch.mul(c_new, out_gate, out=h_new)
                    h_new.tanh_()
                    x.copy_(h_new[:, :C])
            return hs[:, size].numpy()

    return run


@pytest.mark.parametrize("impl", ["stream", "forward_inplace", "forward_inplace-1t", "torch"])
def test_stream_autoregressive(benchmark, numba_threads, impl):
    weights, bias = _params()
    label = impl
    if impl == "forward_inplace-1t":  # the serial driver: no parallel region per pixel
        numba_threads(1)
        impl = "forward_inplace"
    size = _size(benchmark)
    if impl == "stream":
        def fn():
            return stream_pass(weights, bias, size)
    elif impl == "forward_inplace":
        def fn():
            return inplace_pass(weights, bias, size)
    else:
        torch = pytest.importorskip("torch")
        torch.set_num_threads(fastmdlstm._api.numba.get_num_threads())
        fn = torch_pass_factory(weights, bias, size)
    benchmark.group = "stream-autoregressive"
    benchmark.extra_info.update(impl=label, config=f"autoregressive-{size}", pixels=size * size,
                                dtype="float32")
    small = {"stream": stream_pass, "forward_inplace": inplace_pass}
    reference = stream_pass(weights, bias, 4)  # compiles; and a check of the loops
    if impl in small:
        assert np.array_equal(small[impl](weights, bias, 4), reference)
    else:
        np.testing.assert_allclose(torch_pass_factory(weights, bias, 4)(), reference,
                                   atol=1e-5)
    if benchmark.disabled:
        benchmark(fn)
    else:  # seconds per round: a few rounds
        benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=0)
