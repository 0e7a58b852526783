"""fastmdlstm.convert: rnn2d import checked against an independent rnn2d-layout
reference, generic gate/axis permutations round-tripped, and argument errors."""

import itertools
import math

import numpy as np
import pytest

import fastmdlstm
from fastmdlstm import convert

BACKENDS = ["python"] + (["numba"] if fastmdlstm.HAVE_NUMBA else [])


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def rnn2d_reference(x, params, hidden_size, sizes=None):
    """rnn2d's forward, written from its own layout, not from ours.

    x (H, W, N, K) (rnn2d's input layout), params the flat vector, sizes (N, 2)
    valid (height, width) per sample. Per direction z in TL, TR, BL, BR:
    [bias (5, D) | W (K, 5, D) | U_y (D, 5, D) | U_x (D, 5, D)], gates a, i, o,
    f_y, f_x; c = i*tanh(a) + f_y*c(y-1) + f_x*c(x-1), h = o*tanh(c), where the
    previous y / x lie one step back towards the direction's starting corner.
    rnn2d scans from the padded corner and zeroes c and h outside a sample's
    valid region. Returns rnn2d's output layout (H, W, N, 4, D), float64.
    """
    height, width, batch, k = x.shape
    d = hidden_size
    if sizes is None:
        sizes = np.array([[height, width]] * batch)
    per_direction = params.reshape(4, -1)
    out = np.zeros((height, width, batch, 4, d))
    for z in range(4):
        block = per_direction[z]
        bias = block[:5 * d].reshape(5, d)
        w = block[5 * d:5 * d + k * 5 * d].reshape(k, 5, d)
        u_y = block[5 * d + k * 5 * d:5 * d + (k + d) * 5 * d].reshape(d, 5, d)
        u_x = block[5 * d + (k + d) * 5 * d:].reshape(d, 5, d)
        from_top, from_left = z in (0, 1), z in (0, 2)
        c = np.zeros((height, width, batch, d))
        h = np.zeros((height, width, batch, d))
        for i, j in itertools.product(range(height), range(width)):
            y = i if from_top else height - 1 - i
            xx = j if from_left else width - 1 - j
            yp = y - 1 if from_top else y + 1
            xp = xx - 1 if from_left else xx + 1
            for n in range(batch):
                if y >= sizes[n, 0] or xx >= sizes[n, 1]:
                    continue  # stays 0, as in rnn2d
                h_y = h[yp, xx, n] if 0 <= yp < height else np.zeros(d)
                c_y = c[yp, xx, n] if 0 <= yp < height else np.zeros(d)
                h_x = h[y, xp, n] if 0 <= xp < width else np.zeros(d)
                c_x = c[y, xp, n] if 0 <= xp < width else np.zeros(d)
                pre = (bias + np.einsum("k,kgd->gd", x[y, xx, n], w)
                       + np.einsum("e,egd->gd", h_y, u_y) + np.einsum("e,egd->gd", h_x, u_x))
                a, g_i, g_o, g_fy, g_fx = (np.tanh(pre[0]), *_sigmoid(pre[1:]))
                c[y, xx, n] = g_i * a + g_fy * c_y + g_fx * c_x
                h[y, xx, n] = g_o * np.tanh(c[y, xx, n])
        out[:, :, :, z, :] = h
    return out


def rnn2d_current_reference(x, params, hidden_size, sizes=None):
    """rnn2d's current layout and halved cell, pixel by pixel, from its own layout.

    x (H, W, N, K), params the flat vector, sizes (N, 2). Per direction z:
    [bias (5, D) | W (K, 5, D) | U (D, 5, D) | V (D, 5, D)], gates i, f_y, f_x, o, a;
    U multiplies h of the previous column (y, xp), V h of the previous row (yp, x);
    yp = y - 1 for z in (0, 2) else y + 1, xp = x - 1 for z in (0, 1) else x + 1;
    c = i*tanh(a) + 0.5*f_y*c(yp, x) + 0.5*f_x*c(y, xp), h = o*tanh(c); zeros
    outside a sample's valid region. Returns (H, W, N, 4, D), float64.
    """
    height, width, batch, k = x.shape
    d = hidden_size
    if sizes is None:
        sizes = np.array([[height, width]] * batch)
    out = np.zeros((height, width, batch, 4, d))
    for z, block in enumerate(params.reshape(4, -1)):
        bias = block[:5 * d].reshape(5, d)
        w = block[5 * d:(5 + 5 * k) * d].reshape(k, 5, d)
        u = block[(5 + 5 * k) * d:(5 + 5 * k + 5 * d) * d].reshape(d, 5, d)
        v = block[(5 + 5 * k + 5 * d) * d:].reshape(d, 5, d)
        dy = -1 if z in (0, 2) else 1
        dx = -1 if z in (0, 1) else 1
        ys = range(height) if dy < 0 else range(height - 1, -1, -1)
        xs = range(width) if dx < 0 else range(width - 1, -1, -1)
        c = np.zeros((height, width, batch, d))
        h = np.zeros((height, width, batch, d))
        for y in ys:
            for xx in xs:
                for n in range(batch):
                    if y >= sizes[n, 0] or xx >= sizes[n, 1]:
                        continue
                    yp, xp = y + dy, xx + dx
                    row_ok, col_ok = 0 <= yp < height, 0 <= xp < width
                    pre = bias + np.einsum("k,kgd->gd", x[y, xx, n], w)
                    if col_ok:
                        pre = pre + np.einsum("e,egd->gd", h[y, xp, n], u)
                    if row_ok:
                        pre = pre + np.einsum("e,egd->gd", h[yp, xx, n], v)
                    g_i, g_fy, g_fx, g_o = _sigmoid(pre[:4])
                    a = np.tanh(pre[4])
                    c_up = c[yp, xx, n] if row_ok else 0.0
                    c_left = c[y, xp, n] if col_ok else 0.0
                    c[y, xx, n] = g_i * a + 0.5 * g_fy * c_up + 0.5 * g_fx * c_left
                    h[y, xx, n] = g_o * np.tanh(c[y, xx, n])
        out[:, :, :, z, :] = h
    return out


def _rnn2d_problem(batch=2, height=3, width=4, k=3, d=2, seed=0):
    rng = np.random.default_rng(seed)
    params = rng.uniform(-1, 1, 4 * (1 + k + 2 * d) * 5 * d)
    x_rnn2d = rng.standard_normal((height, width, batch, k))
    return x_rnn2d, params


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ragged", [False, True])
def test_from_rnn2d_matches_rnn2d_reference(backend, ragged):
    k, d = 3, 2
    x_rnn2d, params = _rnn2d_problem(k=k, d=d)
    sizes = np.array([[3, 4], [2, 3]]) if ragged else None
    expected = rnn2d_reference(x_rnn2d, params, d, sizes)           # (H, W, N, 4, D)
    imported = convert.from_rnn2d(params, k, d)
    assert imported.weights.shape == (4, k + 2 * d, 5 * d)
    assert imported.bias.shape == (4, 5 * d)
    assert imported.directions == ("tl", "tr", "bl", "br") and imported.variant == "graves"
    x = np.ascontiguousarray(x_rnn2d.transpose(2, 0, 1, 3))         # ours: (B, H, W, K)
    h = fastmdlstm.forward(x, **imported._asdict(), sizes=sizes, backend=backend)
    # rnn2d's (H, W, N, 4, D) -> ours (B, H, W, 4*D), direction z in channels [zD, (z+1)D)
    ours = expected.transpose(2, 0, 1, 3, 4).reshape(h.shape)
    assert np.abs(h - ours).max() <= 1e-10


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ragged", [False, True])
def test_from_rnn2d_current_layout_matches_rnn2d_reference(backend, ragged):
    k, d = 3, 2
    x_rnn2d, params = _rnn2d_problem(k=k, d=d, seed=5)
    sizes = np.array([[3, 4], [2, 3]]) if ragged else None
    expected = rnn2d_current_reference(x_rnn2d, params, d, sizes)
    imported = convert.from_rnn2d(params, k, d, layout="current")
    assert imported.directions == ("tl", "bl", "tr", "br") and imported.variant == "halved"
    x = np.ascontiguousarray(x_rnn2d.transpose(2, 0, 1, 3))
    h = fastmdlstm.forward(x, **imported._asdict(), sizes=sizes, backend=backend)
    assert np.abs(h - expected.transpose(2, 0, 1, 3, 4).reshape(h.shape)).max() <= 1e-10
    # the original layout reads the same numbers differently
    other = fastmdlstm.forward(x, **convert.from_rnn2d(params, k, d)._asdict(), sizes=sizes,
                               backend=backend)
    assert np.abs(other - h).max() > 1e-3
    layer = convert.to_layer(imported)
    assert (layer.variant, layer.directions) == ("halved", ("tl", "bl", "tr", "br"))
    np.testing.assert_array_equal(layer(x, sizes), fastmdlstm.forward(
        x, **imported._asdict(), sizes=sizes))


def test_from_rnn2d_accepts_split_params_layer_and_dtype():
    k, d = 3, 2
    x_rnn2d, params = _rnn2d_problem(k=k, d=d, seed=1)
    flat = convert.from_rnn2d(params, k, d)
    split = convert.from_rnn2d(params.reshape(4, -1), k, d)
    listed = convert.from_rnn2d(params.tolist(), np.int64(k), d)
    for other in (split, listed):
        np.testing.assert_array_equal(other.weights, flat.weights)
        np.testing.assert_array_equal(other.bias, flat.bias)
    x = np.ascontiguousarray(x_rnn2d.transpose(2, 0, 1, 3))
    layer = convert.to_layer(flat)
    assert isinstance(layer, fastmdlstm.MDLSTM2D) and convert.layer_from is convert.to_layer
    assert (layer.directions, layer.variant, layer.dtype) == (flat.directions, "graves",
                                                              np.float64)
    np.testing.assert_array_equal(layer(x), fastmdlstm.forward(x, **flat._asdict()))
    single = convert.from_rnn2d(params.astype(np.float32), k, d)
    assert single.weights.dtype == single.bias.dtype == np.float32
    cast = convert.from_rnn2d(params, k, d, dtype=np.float32)
    np.testing.assert_array_equal(cast.weights, single.weights)
    layer32 = convert.to_layer(cast)
    assert layer32.dtype == np.float32
    np.testing.assert_allclose(layer32(x.astype(np.float32)), layer(x), atol=1e-4)


@pytest.mark.parametrize("layout", ["original", "current"])
def test_from_rnn2d_slices_as_documented(layout):
    """One nonzero parameter at a time lands where the README table says."""
    k, d = 2, 3
    per = (1 + k + 2 * d) * 5 * d
    # rnn2d's gate index -> our block (g, o, i, f_row, f_col); the first recurrent
    # block's first row in our weights (the second block takes the other axis)
    ours_gate, first_rec = {"original": ([0, 2, 1, 3, 4], k),       # a, i, o, f_y, f_x
                            "current": ([2, 3, 4, 1, 0], k + d)}[layout]  # i, f_y, f_x, o, a
    second_rec = 2 * k + d - first_rec
    # (offset within a direction's block, rows, our first row or None for the bias)
    sections = [(0, 1, None), (5 * d, k, 0), (5 * d + k * 5 * d, d, first_rec),
                (5 * d + (k + d) * 5 * d, d, second_rec)]
    rng = np.random.default_rng(0)
    for z, (offset, rows, first), _ in itertools.product(range(4), sections, range(3)):
        r, g, v = rng.integers(rows), rng.integers(5), rng.integers(d)
        params = np.zeros(4 * per)
        params[z * per + offset + r * 5 * d + g * d + v] = 1.0
        imported = convert.from_rnn2d(params, k, d, layout=layout)
        weights, bias = np.zeros_like(imported.weights), np.zeros_like(imported.bias)
        if first is None:
            bias[z, ours_gate[g] * d + v] = 1.0
        else:
            weights[z, first + r, ours_gate[g] * d + v] = 1.0
        np.testing.assert_array_equal(imported.weights, weights)
        np.testing.assert_array_equal(imported.bias, bias)


# --- the generic converter -----------------------------------------------------------

ALIASES = {"g": ["g", "a", "candidate", "C"], "o": ["o", "output"], "i": ["i", "input"]}
AXIS_NAMES = {1: [[0]], 2: [[0, "y", "row", "height"], [1, "x", "col", "column"]],
              3: [[0, "z", "depth"], [1, "y", "row"], [2, "x", "col"]]}


def _export(weights, bias, d, rng):
    """Our (weights, bias) in a random foreign layout, plus the options describing it."""
    n = weights.shape[1] // (3 + d)
    c = weights.shape[0] - d * n
    ours = convert.canonical_gates(d)
    perm = rng.permutation(3 + d)                    # foreign block s holds our gate perm[s]
    axes = [int(a) for a in rng.permutation(d)]      # foreign recurrent block j: axis axes[j]
    transposed = bool(rng.integers(2))

    def foreign(rows):
        blocks = rows.reshape(rows.shape[0], 3 + d, n)[:, perm, :]
        m = blocks.reshape(rows.shape[0], -1)
        return m.T.copy() if transposed else m

    def gate_name(g):
        if g[0] == "f":
            axis = int(g[1:])
            names = [a for a in AXIS_NAMES[d][axis] if isinstance(a, str)] if d > 1 else []
            return str(rng.choice([g, f"f_axis{axis}"] + [f"f_{a}" for a in names]))
        return str(rng.choice(ALIASES[g]))

    gate_order = [gate_name(ours[p]) for p in perm]
    axis_order = [rng.choice([str(a) for a in AXIS_NAMES[d][k]])
                  for k in axes]
    axis_order = [int(a) if a.isdigit() and rng.integers(2) else a for a in axis_order]
    recurrent = [foreign(weights[c + k * n:c + (k + 1) * n]) for k in axes]
    form = rng.integers(3)
    if form == 1:
        recurrent = np.stack(recurrent)
    elif form == 2:
        recurrent = np.concatenate(recurrent, axis=1 if transposed else 0)
    b = bias.reshape(3 + d, n)[perm].reshape(-1)
    b = (b * 0.5, b * 0.5) if rng.integers(2) else b  # summed like PyTorch's two biases
    return (foreign(weights[:c]), recurrent, b,
            {"gate_order": gate_order, "axis_order": axis_order, "transposed": transposed})


@pytest.mark.parametrize("d, spatial", [(1, (7,)), (2, (3, 4)), (3, (2, 3, 2))])
@pytest.mark.parametrize("seed", range(6))
def test_generic_round_trip(d, spatial, seed):
    rng = np.random.default_rng(seed)
    c, n = 3, 2
    x = rng.standard_normal((2,) + spatial + (c,))
    weights, bias = fastmdlstm.init_params(c, n, directions=2, ndim=d, dtype=np.float64,
                                           seed=seed)
    bias = bias + rng.uniform(-1, 1, bias.shape)
    parts = []
    for z in range(2):
        w_in, w_rec, b, options = _export(weights[z], bias[z], d, rng)
        converted = convert.from_gate_blocks(w_in, w_rec, b, hidden_size=n, **options)
        np.testing.assert_array_equal(converted[0], weights[z], err_msg=str(options))
        np.testing.assert_array_equal(converted[1], bias[z], err_msg=str(options))
        parts.append(converted)
    directions = [(1,) * d, (-1,) * d]
    imported = convert.stack_directions(parts, directions, variant="graves")
    assert imported.directions == tuple(directions)
    np.testing.assert_array_equal(
        fastmdlstm.forward(x, **imported._asdict()),
        fastmdlstm.forward(x, weights, bias, directions=directions, variant="graves"))
    layer = convert.to_layer(imported)
    assert layer.spatial_ndim == d and type(layer) is {
        1: fastmdlstm.MDLSTM, 2: fastmdlstm.MDLSTM2D, 3: fastmdlstm.MDLSTM3D}[d]
    np.testing.assert_array_equal(layer(x), fastmdlstm.forward(x, **imported._asdict()))


def test_generic_per_gate_mappings_and_string_orders():
    rng = np.random.default_rng(3)
    c, n = 3, 2
    weights, bias = fastmdlstm.init_params(c, n, dtype=np.float64, seed=3)
    w, b = weights[0], bias[0] + rng.uniform(-1, 1, 5 * n)

    def block(rows, gate):
        return rows[:, gate * n:(gate + 1) * n]

    names = {0: "a", 1: "output", 2: "i", 3: "f_row", 4: "f_col"}   # our gate k -> alias
    order = [4, 0, 3, 2, 1]                                           # any key order works
    w_input = {names[k]: block(w[:c], k) for k in order}
    w_rec = [{names[k]: block(w[c + a * n:c + (a + 1) * n], k).T for k in order}
             for a in (1, 0)]
    w_input_t = {key: value.T for key, value in w_input.items()}
    b_map = {names[k]: b[k * n:(k + 1) * n] for k in order}
    got = convert.from_gate_blocks(w_input_t, w_rec, b_map, axis_order="x y", transposed=True)
    np.testing.assert_array_equal(got[0], w)
    np.testing.assert_array_equal(got[1], b)
    # the same from blocked arrays with a string gate order
    blocked = convert.from_gate_blocks(w[:c], w[c:], b, gate_order="g, o, i, f_y, f_x")
    np.testing.assert_array_equal(blocked[0], w)
    none = convert.from_gate_blocks(w[:c], w[c:], None, gate_order="g o i f0 f1")
    assert (none[1] == 0).all() and none[1].dtype == np.float64


def _numpy_lstm(x, w_ih, w_hh, b_ih, b_hh):
    """PyTorch nn.LSTM's equations (gates i, f, g, o; weights (4N, in)), batch-first."""
    n = w_hh.shape[1]
    h = np.zeros((x.shape[0], n))
    c = np.zeros_like(h)
    out = []
    for t in range(x.shape[1]):
        pre = x[:, t] @ w_ih.T + b_ih + h @ w_hh.T + b_hh
        i, f, g, o = (pre[:, k * n:(k + 1) * n] for k in range(4))
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
        out.append(h)
    return np.stack(out, axis=1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_generic_pytorch_style_lstm(backend):
    """d = 1 with PyTorch's layout: gate order "ifgo", (out, in) storage, two biases."""
    rng = np.random.default_rng(4)
    c, n = 3, 4
    w_ih, w_hh = rng.uniform(-1, 1, (4 * n, c)), rng.uniform(-1, 1, (4 * n, n))
    b_ih, b_hh = rng.uniform(-1, 1, 4 * n), rng.uniform(-1, 1, 4 * n)
    x = rng.standard_normal((2, 6, c))
    weights, bias = convert.from_gate_blocks(w_ih, w_hh, (b_ih, b_hh), gate_order="ifgo",
                                             transposed=True)
    h = fastmdlstm.forward(x, weights, bias, variant="graves", backend=backend)
    assert np.abs(h - _numpy_lstm(x, w_ih, w_hh, b_ih, b_hh)).max() <= 1e-10
    torch = pytest.importorskip("torch")
    lstm = torch.nn.LSTM(c, n, batch_first=True).double()
    params = [p.detach().numpy() for p in
              (lstm.weight_ih_l0, lstm.weight_hh_l0, lstm.bias_ih_l0, lstm.bias_hh_l0)]
    weights, bias = convert.from_gate_blocks(params[0], params[1], params[2:],
                                             gate_order=["i", "f", "g", "o"], transposed=True)
    with torch.no_grad():
        expected = lstm(torch.from_numpy(x))[0].numpy()
    h = fastmdlstm.forward(x, weights, bias, variant="graves", backend=backend)
    assert np.abs(h - expected).max() <= 1e-10


# --- errors ------------------------------------------------------------------------


def test_from_rnn2d_errors():
    params = np.zeros(4 * (1 + 3 + 2 * 2) * 5 * 2)
    with pytest.raises(ValueError, match=r"params must hold 4 \* \(1 \+ K \+ 2\*D\) \* 5 \* D "
                                         r"= 4 \* \(1 \+ 3 \+ 2\*2\) \* 5 \* 2 = 320 .* got 319"):
        convert.from_rnn2d(params[:-1], 3, 2)
    with pytest.raises(ValueError, match="= 400 values .* got 320"):
        convert.from_rnn2d(params, 5, 2)
    with pytest.raises(ValueError, match="hidden_size must be >= 1"):
        convert.from_rnn2d(params, 3, 0)
    with pytest.raises(TypeError, match="input_size must be an int"):
        convert.from_rnn2d(params, 3.0, 2)
    with pytest.raises(TypeError, match="params must hold real numbers"):
        convert.from_rnn2d(params.astype(complex), 3, 2)
    with pytest.raises(ValueError, match=r"layout must be one of \('original', 'current'\), "
                                         r"got 'newest'"):
        convert.from_rnn2d(params, 3, 2, layout="newest")


def _blocks(c=3, n=2, d=2):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((c, (3 + d) * n)),
            [rng.standard_normal((n, (3 + d) * n)) for _ in range(d)],
            rng.standard_normal((3 + d) * n))


@pytest.mark.parametrize("options, match", [
    ({"gate_order": ("g", "o", "i", "q", "f1")}, r"gate_order: unknown gate 'q'"),
    ({"gate_order": ("g", "o", "i", "f_z", "f1")}, r"gate_order: unknown gate 'f_z'"),
    ({"gate_order": ("g", "o", "i", "f0", "f0")},
     r"gate_order must name each of .* duplicated \['f0'\], missing \['f1'\]"),
    ({"gate_order": ("a", "g", "o", "i", "f_x")},
     r"gate_order must name each of .* duplicated \['g'\], missing \['f0'\]"),
    ({"gate_order": ("g", "o", "i")}, r"gate_order must name 4, 5 or 6 gates"),
    ({"gate_order": 5}, r"gate_order must be a sequence of gate names"),
    ({}, r"gate_order is required"),
    ({"gate_order": "goiyx", "axis_order": ("y", "y")}, r"gate_order: unknown gate 'y'"),
    ({"gate_order": "g o i f0 f1", "axis_order": ("y", "y")},
     r"axis_order must list each of the 2 spatial axes once"),
    ({"gate_order": "g o i f0 f1", "axis_order": ("y", "depth")},
     r"axis_order: unknown axis 'depth' for d=2"),
    ({"gate_order": "g o i f0 f1", "axis_order": ("y",)}, r"axis_order must list each"),
    ({"gate_order": "g o i f0 f1", "hidden_size": 3}, r"hidden_size=3, but w_input"),
    ({"gate_order": "g o i f0 f1 f2"}, r"w_input has shape \(3, 10\): its gate axis must"),
    ({"gate_order": "g o i f0 f1", "transposed": True}, r"w_input has shape \(3, 10\)"),
])
def test_from_gate_blocks_errors(options, match):
    w_in, w_rec, b = _blocks()
    with pytest.raises(ValueError, match=match):
        convert.from_gate_blocks(w_in, w_rec, b, **options)


def test_from_gate_blocks_shape_errors():
    w_in, w_rec, b = _blocks()
    order = {"gate_order": "g o i f0 f1"}
    with pytest.raises(ValueError, match=r"w_recurrent must hold d=2 blocks .* got 1"):
        convert.from_gate_blocks(w_in, w_rec[:1], b, **order)
    with pytest.raises(ValueError, match=r"w_recurrent\[1\] must have shape \(2, 10\)"):
        convert.from_gate_blocks(w_in, [w_rec[0], w_rec[1][:1]], b, **order)
    with pytest.raises(ValueError, match=r"w_recurrent has shape \(3, 10\)"):
        convert.from_gate_blocks(w_in, np.zeros((3, 10)), b, **order)
    with pytest.raises(ValueError, match=r"bias must hold 5\*N = 10 values \(N=2\), got 9"):
        convert.from_gate_blocks(w_in, w_rec, b[:9], **order)
    with pytest.raises(ValueError, match=r"w_input must be 2-D"):
        convert.from_gate_blocks(w_in[0], w_rec, b, **order)
    with pytest.raises(ValueError, match=r"w_input must map the 5 gates .* got keys"):
        convert.from_gate_blocks({"g": w_in}, w_rec, b, **order)
    with pytest.raises(ValueError, match=r"gate_order is required for bias"):
        rows = {g: np.zeros((2, 2)) for g in "g o i f0 f1".split()}
        convert.from_gate_blocks({g: w_in[:, :2] for g in rows}, [rows, rows], b)
    with pytest.raises(TypeError, match="transposed must be a bool"):
        convert.from_gate_blocks(w_in, w_rec, b, transposed="yes", **order)
    with pytest.raises(TypeError, match="dtype must be float32 or float64"):
        convert.from_gate_blocks(w_in, w_rec, b, dtype=np.float16, **order)


def test_stack_and_layer_errors():
    part = convert.from_gate_blocks(*_blocks(), gate_order="g o i f0 f1")
    with pytest.raises(ValueError, match="directions has 1 entries but weights holds Z=2"):
        convert.stack_directions([part, part], ["tl"])
    with pytest.raises(ValueError, match="variant must be one of"):
        convert.stack_directions([part], ["tl"], variant="lstm")
    with pytest.raises(ValueError, match="do not fit a 3-D cell"):
        convert.stack_directions([part], [(1, 1, 1)])
    with pytest.raises(ValueError, match="parts must all have the same shapes"):
        convert.stack_directions([part, (part[0][:-1], part[1])], ["tl", "br"])
    imported = convert.stack_directions([part], "tl")
    with pytest.raises(ValueError, match=r"imported: weights must have shape .* Z=2 directions"):
        convert.to_layer(imported._replace(directions=("tl", "br")))
    assert math.isclose(float(np.abs(convert.to_layer(imported).weights - part[0]).max()), 0)
