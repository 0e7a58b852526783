"""PyTorch peer for the benchmarks: the 2-D spatial LSTM forward pass on the CPU.

Eager PyTorch under torch.no_grad(), written the way a strong PyTorch user would,
so that fastmdlstm is measured against a serious baseline rather than a loop over
pixels. Same contract as fastmdlstm.forward for 2-D inputs (N hidden units, C input
channels, one scan direction):

    pre  = [x_ij | h_(i-1,j) | h_(i,j-1)] @ W + b        W (C + 2N, 5N), b (5N,)
    g = tanh(pre[:N])  o = sigmoid(pre[N:2N])  i = sigmoid(pre[2N:3N])
    f_row = sigmoid(pre[3N:4N])  f_col = sigmoid(pre[4N:5N])
    c_ij = g*i + f_row*c_(i-1,j) + f_col*c_(i,j-1)
    h_ij = tanh(c_ij * o)  ("slstm")   or   o * tanh(c_ij)  ("graves")

States outside the image are zero. Direction "tr" = (1, -1) scans rows downwards and
columns leftwards (the previous column is j+1), and so on; each direction has its own
W[z], b[z] and the outputs are concatenated along the channel axis.

Strategy:
  * Cells of one anti-diagonal t = i + j are independent, so the scan is a loop over
    H + W - 1 diagonals. All Z directions run together: direction is the batch axis of
    every batched matmul and elementwise op, so the op count per diagonal does not
    grow with Z.
  * A direction is a flip of the image. The flip is folded into the gather that skews
    x into diagonal order and into the gather that un-skews h, so no flipped copy of
    the activations is ever made.
  * The input projection of all pixels is one batched GEMM up front, written straight
    in diagonal order, so the recurrence adds into contiguous slabs in place.
  * States are stored skewed: diagonal t is a contiguous slab indexed by (i, b), with a
    zero slot in front. The neighbours (i-1, j) and (i, j-1) of diagonal t's cells are
    then two row windows of diagonal t-1, one row block apart, each multiplied in place
    by its half of the recurrent weights (two baddbmm_). That measured as fast as or
    faster than one K=2N matmul after torch.cat, or after keeping [h_up | h_left]
    adjacent by writing each h twice.
  * tanh is about 4x slower than sigmoid in PyTorch's CPU kernels, so tanh(a) is
    computed as 2*sigmoid(2a) - 1: the g columns of W and b are doubled once, and a
    single sigmoid_ covers the whole contiguous gate block.
  * Buffers and every per-diagonal view are made once in make_runner, so the timed
    loop issues only arithmetic.
"""

import sys
import time

import numpy as np
import torch

__all__ = ["DIRECTIONS", "VARIANTS", "prepare", "make_runner", "torch_forward",
           "make_autograd_runner"]

DIRECTIONS = {"tl": (1, 1), "tr": (1, -1), "bl": (-1, 1), "br": (-1, -1)}
VARIANTS = ("slstm", "graves")


def prepare(x, weights, bias):
    """NumPy arrays (or tensors) -> torch tensors; x's float dtype wins.

    x (B, H, W, C); weights (Z, C + 2N, 5N); bias (Z, 5N). NumPy memory is shared,
    not copied.
    """
    x = torch.as_tensor(x).detach()
    if x.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"x must be float32 or float64, got {x.dtype}")
    weights = torch.as_tensor(weights).detach().to(x.dtype)
    bias = torch.as_tensor(bias).detach().to(x.dtype)
    return x, weights, bias


def _skew_plan(batch, height, width, signs):
    """Diagonal order of the cells and the gathers in and out of it.

    Returns diagonals [(first row, cell count, cells before it)] and two index vectors:
    idx_in picks rows of x (B*H*W, C) in the order (z, diagonal, i, b), with each
    direction's flip applied; idx_out picks rows of the state buffer (T+1, Z, H+1, B)
    in the output order (b, row, column, z).
    """
    ii, jj = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    ii, jj = ii.ravel(), jj.ravel()
    order = np.lexsort((ii, ii + jj))  # by diagonal, then row
    di, dj = ii[order], jj[order]
    counts = np.bincount(di + dj, minlength=height + width - 1)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    diagonals = [(max(0, t - width + 1), int(m), int(s))
                 for t, (m, s) in enumerate(zip(counts, starts))]

    b = np.arange(batch)
    z_count = len(signs)
    idx_in = []
    idx_out = np.empty((batch, height, width, z_count), dtype=np.int64)
    for z, (si, sj) in enumerate(signs):
        # Scan coordinates (i, j) of direction z sit at image pixel (pi, pj).
        pi = di if si > 0 else height - 1 - di
        pj = dj if sj > 0 else width - 1 - dj
        idx_in.append(((b[None, :] * height + pi[:, None]) * width + pj[:, None]).ravel())
        i = ii if si > 0 else height - 1 - ii  # the same map read the other way
        j = jj if sj > 0 else width - 1 - jj
        row = (((i + j + 1) * z_count + z) * (height + 1) + i + 1) * batch
        idx_out[..., z] = (row[None, :] + b[:, None]).reshape(batch, height, width)
    return (diagonals, torch.from_numpy(np.concatenate(idx_in)),
            torch.from_numpy(idx_out.ravel()))


def make_runner(x, weights, bias, directions=("tl",), variant="slstm"):
    """Zero-argument callable doing the forward pass on pre-converted tensors.

    Everything that depends only on the shapes (gather indices, folded weights, state
    buffers, per-diagonal views) is built here, once. Each call returns a fresh tensor
    h (B, H, W, Z*N). The runner reuses its buffers: do not call it from two threads.
    """
    x, weights, bias = prepare(x, weights, bias)
    if isinstance(directions, str):
        directions = (directions,)
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    unknown = [d for d in directions if d not in DIRECTIONS]
    if unknown or not directions:
        raise ValueError(f"directions must be names from {tuple(DIRECTIONS)}, got {directions!r}")
    if x.ndim != 4:
        raise ValueError(f"x must be (B, H, W, C), got shape {tuple(x.shape)}")
    batch, height, width, channels = x.shape
    z_count, n = len(directions), weights.shape[-1] // 5
    if weights.shape != (z_count, channels + 2 * n, 5 * n) or bias.shape != (z_count, 5 * n):
        raise ValueError(f"weights {tuple(weights.shape)} / bias {tuple(bias.shape)} do not "
                         f"fit C={channels} and {z_count} direction(s)")
    out_shape = (batch, height, width, z_count * n)
    if batch * height * width == 0:
        return lambda: x.new_zeros(out_shape)

    diagonals, idx_in, idx_out = _skew_plan(
        batch, height, width, [DIRECTIONS[d] for d in directions])
    # tanh(a) = 2*sigmoid(2a) - 1: doubling the g columns lets one sigmoid_ cover all gates.
    weights = weights.clone()
    bias = bias.clone()
    weights[..., :n] *= 2
    bias[..., :n] *= 2
    w_in = weights[:, :channels].contiguous()
    w_up = weights[:, channels:channels + n].contiguous()
    w_left = weights[:, channels + n:].contiguous()
    b_in = bias.reshape(z_count, 1, 5 * n)

    rows = (height + 1) * batch  # one zero slot (i = -1) in front of each diagonal
    proj = x.new_empty((z_count, height * width * batch, 5 * n))
    # hs[t + 1] holds diagonal t; slots of cells outside the image are never written and
    # stay zero, so the buffer is reused across calls without clearing.
    hs = x.new_zeros((height + width, z_count, rows, n))
    # The cell state only needs the previous diagonal: two slabs used alternately. It
    # holds -c, which saves a pass per diagonal (see the loop).
    cs = x.new_zeros((2, z_count, rows, n))
    zero = x.new_zeros(())
    one = x.new_ones(())

    steps = []
    for t, (lo, m, start) in enumerate(diagonals):
        r0, r1 = lo * batch, (lo + m) * batch
        pre = proj[:, start * batch:(start + m) * batch]
        c_prev = cs[(t + 1) % 2]
        # Cell i of diagonal t: (i-1, j) is slot i and (i, j-1) slot i+1 of diagonal t-1.
        steps.append((pre, hs[t, :, r0:r1], hs[t, :, r0 + batch:r1 + batch],
                      *pre.split(n, dim=2),
                      c_prev[:, r0:r1], c_prev[:, r0 + batch:r1 + batch],
                      cs[t % 2, :, r0 + batch:r1 + batch],
                      hs[t + 1, :, r0 + batch:r1 + batch]))
    x_rows = x.reshape(batch * height * width, channels)
    slstm = variant == "slstm"

    @torch.no_grad()
    def run():
        cs.zero_()
        x_skew = x_rows.index_select(0, idx_in).view(z_count, -1, channels)
        torch.baddbmm(b_in, x_skew, w_in, out=proj)
        for pre, h_up, h_left, s, o, i, f_row, f_col, c_up, c_left, c_neg, h in steps:
            pre.baddbmm_(h_up, w_up).baddbmm_(h_left, w_left)
            pre.sigmoid_()  # s = sigmoid(2 a_g), so g = 2s - 1
            # With -c stored, -g*i = i - 2*s*i is a single addcmul and the forget terms
            # keep their sign: -c = -g*i + f_row*(-c_up) + f_col*(-c_left).
            torch.addcmul(i, s, i, value=-2, out=c_neg)
            c_neg.addcmul_(f_row, c_up).addcmul_(f_col, c_left)
            if slstm:  # tanh(c*o) = 1 - 2*sigmoid(2*(-c)*o)
                torch.addcmul(zero, c_neg, o, value=2, out=h).sigmoid_()
                torch.add(one, h, alpha=-2, out=h)
            else:  # o*tanh(c) = o - 2*o*sigmoid(2*(-c))
                torch.mul(c_neg, 2, out=h).sigmoid_()
                torch.addcmul(o, h, o, value=-2, out=h)
        return hs.view(-1, n).index_select(0, idx_out).view(out_shape)

    return run


def torch_forward(x, weights, bias, directions=("tl",), variant="slstm"):
    """h (B, H, W, Z*N) as a torch tensor; x (B, H, W, C) NumPy array or tensor."""
    return make_runner(x, weights, bias, directions, variant)()


def _self_check(seed=0):
    """Compare with a per-pixel float64 NumPy scan; raise AssertionError on a mismatch."""

    def sigmoid(v):
        return 1.0 / (1.0 + np.exp(-v))

    def reference(x, weights, bias, directions, variant):
        batch, height, width, _ = x.shape
        n = weights.shape[2] // 5
        out = np.zeros((batch, height, width, len(directions) * n))
        for z, name in enumerate(directions):
            si, sj = DIRECTIONS[name]
            h = np.zeros((batch, height, width, n))
            c = np.zeros_like(h)
            zeros = np.zeros((batch, n))
            for i in range(height)[::si]:
                for j in range(width)[::sj]:
                    up = (i - si, j) if 0 <= i - si < height else None  # previous row
                    left = (i, j - sj) if 0 <= j - sj < width else None  # previous column
                    h_up, c_up = (h[:, up[0], up[1]], c[:, up[0], up[1]]) if up else (zeros,) * 2
                    h_left, c_left = ((h[:, left[0], left[1]], c[:, left[0], left[1]])
                                      if left else (zeros,) * 2)
                    pre = np.concatenate([x[:, i, j], h_up, h_left], axis=1) @ weights[z]
                    pre = pre + bias[z]
                    g = np.tanh(pre[:, :n])
                    o, ig, f_row, f_col = (sigmoid(pre[:, k * n:(k + 1) * n]) for k in range(1, 5))
                    c[:, i, j] = g * ig + f_row * c_up + f_col * c_left
                    h[:, i, j] = np.tanh(c[:, i, j] * o) if variant == "slstm" else (
                        o * np.tanh(c[:, i, j]))
            out[..., z * n:(z + 1) * n] = h
        return out

    rng = np.random.default_rng(seed)
    batch, channels, n = 2, 3, 4
    shapes = [(int(rng.integers(3, 7)), int(rng.integers(4, 8))) for _ in range(4)]
    shapes += [(1, 5), (4, 1), (1, 1), (6, 7)]
    direction_sets = [tuple(DIRECTIONS), ("tl",), ("tr",), ("bl",), ("br",), ("br", "tl")]
    worst = {np.float64: 0.0, np.float32: 0.0}
    cases = 0
    for height, width in shapes:
        for directions in direction_sets:
            z = len(directions)
            x = rng.standard_normal((batch, height, width, channels))
            weights = rng.standard_normal((z, channels + 2 * n, 5 * n)) * 0.7
            bias = rng.standard_normal((z, 5 * n)) * 0.5
            for variant in VARIANTS:
                expected = reference(x, weights, bias, directions, variant)
                for dtype, tol in ((np.float64, 1e-10), (np.float32, 1e-4)):
                    run = make_runner(x.astype(dtype), weights.astype(dtype),
                                      bias.astype(dtype), directions, variant)
                    for _ in range(2):  # the second call checks buffer reuse
                        got = run()
                        assert got.dtype == torch.from_numpy(np.zeros(0, dtype)).dtype
                        assert got.shape == expected.shape, (got.shape, expected.shape)
                        err = float(np.abs(got.numpy() - expected).max())
                        assert err <= tol, (height, width, directions, variant, dtype, err)
                        worst[dtype] = max(worst[dtype], err)
                    cases += 1
    # torch inputs and the one-shot entry point
    x = torch.randn(1, 3, 4, channels, dtype=torch.float64)
    weights = torch.randn(1, channels + 2 * n, 5 * n, dtype=torch.float64)
    bias = torch.randn(1, 5 * n, dtype=torch.float64)
    got = torch_forward(x, weights, bias)
    expected = reference(x.numpy(), weights.numpy(), bias.numpy(), ("tl",), "slstm")
    assert float(np.abs(got.numpy() - expected).max()) <= 1e-10
    print(f"torch_peer self-check passed: {cases + 1} cases, max abs error "
          f"float64 {worst[np.float64]:.1e}, float32 {worst[np.float32]:.1e}")


# ---- Autograd peer (training) ------------------------------------------------
# The runner above works in place on views of preallocated buffers under no_grad,
# which autograd cannot differentiate. The training peer keeps its strategy (one
# input GEMM in diagonal order, one batched step per anti-diagonal with the
# directions as the batch axis, one sigmoid over all gates) but builds every
# diagonal's states out of place, so that autograd records the graph:
#   * a diagonal's h and c are (Z, m*B, N) tensors in (row, sample) order; the
#     neighbours of diagonal t's cells are two row windows of diagonal t-1 padded
#     by one zero row block (F.pad; negative pads crop), one block apart;
#   * the g columns of W and b are doubled by a constant factor inside the graph,
#     so tanh(a) = 2*sigmoid(2a) - 1 and the gradients reach the caller's W, b;
#   * the diagonals' h are concatenated and gathered once into (B, H, W, Z*N).


def _unskew_index(batch, height, width, signs):
    """Rows of the concatenated diagonals (Z, H*W*B, N) in output order (b, row, col, z)."""
    ii, jj = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    order = np.lexsort((ii.ravel(), (ii + jj).ravel()))
    rank = np.empty(height * width, np.int64)
    rank[order] = np.arange(height * width)  # position of scan cell (i, j) on the diagonals
    b = np.arange(batch)[:, None, None]
    z_count = len(signs)
    idx = np.empty((batch, height, width, z_count), np.int64)
    for z, (si, sj) in enumerate(signs):
        i = ii if si > 0 else height - 1 - ii  # scan coordinates of image pixel (ii, jj)
        j = jj if sj > 0 else width - 1 - jj
        idx[..., z] = (z * height * width + rank[i * width + j])[None] * batch + b
    return torch.from_numpy(idx.ravel())


def make_autograd_runner(x, weights, bias, directions=("tl",), variant="slstm"):
    """Callable run(grad_h) -> (grad_x, grad_weights, grad_bias), torch tensors.

    Each call runs the forward with x, weights and bias as leaves that require
    grad, then backpropagates grad_h (B, H, W, Z*N) through h: the gradients of
    the loss sum(h * grad_h), which h.backward(grad_h) computes without the extra
    product and sum. Shapes as in make_runner; gradients have the shapes of x,
    weights (Z, C + 2N, 5N) and bias (Z, 5N). run.forward() returns h alone (no
    graph).
    """
    x, weights, bias = prepare(x, weights, bias)
    if isinstance(directions, str):
        directions = (directions,)
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    unknown = [d for d in directions if d not in DIRECTIONS]
    if unknown or not directions:
        raise ValueError(f"directions must be names from {tuple(DIRECTIONS)}, got {directions!r}")
    if x.ndim != 4:
        raise ValueError(f"x must be (B, H, W, C), got shape {tuple(x.shape)}")
    batch, height, width, channels = x.shape
    z_count, n = len(directions), weights.shape[-1] // 5
    if weights.shape != (z_count, channels + 2 * n, 5 * n) or bias.shape != (z_count, 5 * n):
        raise ValueError(f"weights {tuple(weights.shape)} / bias {tuple(bias.shape)} do not "
                         f"fit C={channels} and {z_count} direction(s)")
    if batch * height * width == 0:
        raise ValueError("empty input")
    signs = [DIRECTIONS[d] for d in directions]
    diagonals, idx_in, _ = _skew_plan(batch, height, width, signs)
    idx_out = _unskew_index(batch, height, width, signs)
    out_shape = (batch, height, width, z_count * n)
    scale = x.new_ones(5 * n)
    scale[:n] = 2
    # Per diagonal: (its rows of the projection, the pads that turn the previous
    # diagonal's rows into rows lo-1 .. lo+m-1 of this one).
    steps = []
    prev_lo, prev_m = 0, 0
    for lo, m, _ in diagonals:
        front, back = (prev_lo - lo + 1) * batch, (lo + m - prev_lo - prev_m) * batch
        steps.append((m * batch, (0, 0, front, back)))
        prev_lo, prev_m = lo, m
    split_sizes = [rows for rows, _ in steps]
    slstm = variant == "slstm"
    pad = torch.nn.functional.pad

    def forward(x_leaf, w_leaf, b_leaf):
        w = w_leaf * scale  # doubles the g columns (tanh via sigmoid), inside the graph
        b = (b_leaf * scale).unsqueeze(1)
        w_in, w_up, w_left = w[:, :channels], w[:, channels:channels + n], w[:, channels + n:]
        x_skew = x_leaf.reshape(-1, channels).index_select(0, idx_in)
        proj = torch.baddbmm(b, x_skew.view(z_count, -1, channels), w_in)
        hs = []
        h = c = x.new_zeros((z_count, 0, n))
        # split, not slicing: a slice's backward fills a zero tensor of proj's size,
        # once per diagonal; split's backward concatenates all the pieces once.
        for (rows, pads), pre in zip(steps, proj.split(split_sizes, dim=1)):
            if h.shape[1]:
                h_pad = pad(h, pads)
                c_pad = pad(c, pads)
                pre = torch.baddbmm(pre, h_pad[:, :rows], w_up)
                pre = torch.baddbmm(pre, h_pad[:, batch:], w_left)
            s, o, i, f_row, f_col = pre.sigmoid().split(n, dim=2)
            c = (2 * s - 1) * i
            if h.shape[1]:
                c = c + f_row * c_pad[:, :rows] + f_col * c_pad[:, batch:]
            h = torch.tanh(c * o) if slstm else o * torch.tanh(c)
            hs.append(h)
        return torch.cat(hs, dim=1).view(-1, n).index_select(0, idx_out).view(out_shape)

    def run(grad_h):
        grad_h = torch.as_tensor(grad_h)
        x_leaf = x.detach().requires_grad_()
        w_leaf = weights.detach().requires_grad_()
        b_leaf = bias.detach().requires_grad_()
        forward(x_leaf, w_leaf, b_leaf).backward(grad_h)
        return x_leaf.grad, w_leaf.grad, b_leaf.grad

    @torch.no_grad()
    def forward_only():
        return forward(x, weights, bias)

    run.forward = forward_only
    return run


def _self_check_autograd(seed=0):
    """Gradients of make_autograd_runner against fastmdlstm.backward (float64, small
    problems, both variants, one to four directions); raise AssertionError on a mismatch
    beyond 1e-8 and return the largest difference."""
    import fastmdlstm

    rng = np.random.default_rng(seed)
    batch, channels, n = 2, 3, 4
    worst = 0.0
    cases = [((5, 7), tuple(DIRECTIONS)), ((4, 4), ("tl",)), ((6, 3), ("br", "tr")),
             ((1, 5), ("bl",)), ((3, 1), ("tl", "br"))]
    for (height, width), directions in cases:
        z = len(directions)
        x = rng.standard_normal((batch, height, width, channels))
        weights = rng.standard_normal((z, channels + 2 * n, 5 * n)) * 0.5
        bias = rng.standard_normal((z, 5 * n)) * 0.5
        grad_h = rng.standard_normal((batch, height, width, z * n))
        for variant in VARIANTS:
            h, c = fastmdlstm.forward(x, weights, bias, variant=variant,
                                      directions=list(directions), return_cell=True)
            expected = fastmdlstm.backward(x, weights, bias, grad_h, h=h, c=c,
                                           variant=variant, directions=list(directions))
            run = make_autograd_runner(x, weights, bias, directions, variant)
            assert float(np.abs(run.forward().numpy() - h).max()) <= 1e-10
            for _ in range(2):  # a second call must not accumulate into the first
                got = run(grad_h)
                for name, g, e in zip(("grad_x", "grad_w", "grad_b"), got, expected):
                    assert g.shape == e.shape, (name, g.shape, e.shape)
                    err = float(np.abs(g.numpy() - e).max())
                    assert err <= 1e-8, (height, width, directions, variant, name, err)
                    worst = max(worst, err)
    return worst


def _bench(repeat=7):
    """GFLOP/s on the benchmark configurations (float32)."""
    configs = [(16, 64, 64, 16, 64, 1), (16, 64, 64, 16, 64, 4),
               (64, 28, 28, 1, 32, 1), (1, 256, 256, 16, 32, 1)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for batch, height, width, channels, n, z in configs:
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch, height, width, channels)).astype(np.float32)
        weights = (rng.standard_normal((z, channels + 2 * n, 5 * n)) * 0.1).astype(np.float32)
        bias = np.zeros((z, 5 * n), np.float32)
        run = make_runner(x, weights, bias, tuple(DIRECTIONS)[:z])
        run()  # warm-up
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        flops = 2 * batch * height * width * (channels + 2 * n) * 5 * n * z
        print(f"B={batch:3d} H={height:3d} W={width:3d} C={channels:2d} N={n:2d} Z={z}: "
              f"median {np.median(times) * 1e3:7.1f} ms  {flops / np.median(times) / 1e9:6.1f} "
              f"GFLOP/s  (best {flops / min(times) / 1e9:6.1f})")


if __name__ == "__main__":
    _self_check()
    print(f"autograd peer self-check passed: max gradient difference "
          f"{_self_check_autograd():.1e}")
    if "--bench" in sys.argv[1:]:
        _bench()
