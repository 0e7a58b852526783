"""Converters from other MDLSTM implementations' parameter layouts into ours.

Our layout (README "The math"), per direction: weights (C + d*N, (3+d)*N) with
rows [input | h from the previous position along axis 0 | ... | axis d-1] and
column blocks (N wide) g, o, i, f0, ..., f(d-1); bias ((3+d)*N,).

from_gate_blocks() does the general permutation (any gate order, any order of
the recurrent blocks, (in, out) or (out, in) storage, per-gate mappings);
from_rnn2d() slices jpuigcerver/rnn2d's flat parameter vector (its original or
its current layout, RNN2D_LAYOUTS) and calls it.
"""

import re
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from ._api import FLOAT_DTYPES, VARIANTS, parse_directions
from ._layers import MDLSTM, MDLSTM2D, MDLSTM3D

__all__ = ["Imported", "canonical_gates", "from_gate_blocks", "stack_directions",
           "from_rnn2d", "to_layer", "layer_from", "RNN2D_GATE_ORDER", "RNN2D_DIRECTIONS",
           "RNN2D_LAYOUTS", "Rnn2dLayout"]


class Rnn2dLayout(NamedTuple):
    """One of rnn2d's parameter layouts: per direction [bias | W | R1 | R2]."""
    gate_order: tuple      # rnn2d's gate blocks, in storage order
    axis_order: tuple      # the axis ("y": rows, "x": columns) of R1 and R2
    directions: tuple      # our name of rnn2d's direction z = 0, 1, 2, 3
    variant: str           # our name of rnn2d's cell


RNN2D_LAYOUTS = {
    # the first one (rnn2d's lstm_impl.h): U_y then U_x; TL, TR, BL, BR; h = o*tanh(c)
    "original": Rnn2dLayout(("a", "i", "o", "f_y", "f_x"), ("y", "x"),
                            ("tl", "tr", "bl", "br"), "graves"),
    # the current one (rnn2d's include/rnn2d/internal/..., the halved cell
    # lstm2d_cell_halved.h): U multiplies h of the previous column, V that of the
    # previous row; z = 1 scans up from the bottom-left corner, z = 2 from the top-right.
    "current": Rnn2dLayout(("i", "f_y", "f_x", "o", "a"), ("x", "y"),
                           ("tl", "bl", "tr", "br"), "halved"),
}
# The original layout's gate order and directions (kept names).
RNN2D_GATE_ORDER = RNN2D_LAYOUTS["original"].gate_order
RNN2D_DIRECTIONS = RNN2D_LAYOUTS["original"].directions

# Axis names per number of spatial axes d. Inputs are (B, *spatial, C): for
# images (H, W) y is axis 0, for volumes or video (D, H, W) y is axis 1.
_AXIS_NAMES = {
    1: {},
    2: {"y": 0, "row": 0, "rows": 0, "h": 0, "height": 0,
        "x": 1, "col": 1, "cols": 1, "column": 1, "columns": 1, "w": 1, "width": 1},
    3: {"z": 0, "depth": 0, "d": 0, "t": 0, "time": 0,
        "y": 1, "row": 1, "rows": 1, "h": 1, "height": 1,
        "x": 2, "col": 2, "cols": 2, "column": 2, "columns": 2, "w": 2, "width": 2},
}
_GATE_ALIASES = {"g": "g", "a": "g", "c": "g", "candidate": "g", "cell": "g",
                 "o": "o", "output": "o", "i": "i", "input": "i"}
_FORGET = re.compile(r"(?:forget|f)_?(?:axis_?)?(\w+)")  # f0, f_y, fx, f_axis1, forget_row


class Imported(NamedTuple):
    """Converted parameters of Z directions.

    fastmdlstm.forward takes variant and directions by keyword only, so run them
    with forward(x, **imported._asdict()), or build a layer with to_layer(imported).
    """
    weights: np.ndarray   # (Z, C + d*N, (3+d)*N)
    bias: np.ndarray      # (Z, (3+d)*N)
    directions: tuple     # Z names ("tl", ...) or sign tuples
    variant: str          # "slstm", "graves", "halved" or "stable"


def canonical_gates(d):
    """Our gate block order for d spatial axes: ('g', 'o', 'i', 'f0', ..., 'f{d-1}')."""
    return ("g", "o", "i") + tuple(f"f{k}" for k in range(d))


# --- names -----------------------------------------------------------------------


def _axis_index(name, d, arg):
    """An axis given as an int (0..d-1) or a name (y, x, row, col, depth, ...)."""
    if isinstance(name, (int, np.integer)) and not isinstance(name, (bool, np.bool_)):
        if 0 <= name < d:
            return int(name)
    elif isinstance(name, str):
        key = name.strip().lower()
        if key.isdigit() and int(key) < d:
            return int(key)
        if key in _AXIS_NAMES[d]:
            return _AXIS_NAMES[d][key]
    names = f" or one of {sorted(_AXIS_NAMES[d])}" if _AXIS_NAMES[d] else ""
    raise ValueError(f"{arg}: unknown axis {name!r} for d={d} spatial axes "
                     f"(use 0..{d - 1}{names})")


def _gate_name(name, d, arg):
    """Our name (g, o, i, f0, ...) of one gate given under any alias."""
    if isinstance(name, str):
        key = name.strip().lower()
        if key in _GATE_ALIASES:
            return _GATE_ALIASES[key]
        if d == 1 and key in ("f", "forget"):
            return "f0"
        match = _FORGET.fullmatch(key)
        if match:
            try:
                return f"f{_axis_index(match.group(1), d, arg)}"
            except ValueError:
                pass
    raise ValueError(f"{arg}: unknown gate {name!r} for d={d} spatial axes; gates are "
                     f"{canonical_gates(d)} or aliases (a/c/candidate for g; f_<axis> "
                     "for a forget gate, axis 0..d-1 or a name such as y/x/row/col)")


def _split_names(value):
    """A sequence of names; a string is split at commas/spaces, or into letters ("ifgo")."""
    if isinstance(value, str):
        parts = [p for p in re.split(r"[\s,]+", value) if p]
        return parts if len(parts) > 1 else list(value.strip())
    return list(value)


def _resolve_gate_order(gate_order, arg="gate_order"):
    """(our names in the given order, d = number of gates - 3), every gate exactly once."""
    try:
        names = _split_names(gate_order)
    except TypeError:
        raise ValueError(f"{arg} must be a sequence of gate names, "
                         f"got {type(gate_order).__name__}") from None
    d = len(names) - 3
    if not 1 <= d <= 3:
        raise ValueError(f"{arg} must name 4, 5 or 6 gates (g, o, i and one forget gate per "
                         f"spatial axis, d = 1..3), got {len(names)}: {names}")
    resolved = tuple(_gate_name(name, d, arg) for name in names)
    duplicated = sorted({g for g in resolved if resolved.count(g) > 1})
    missing = [g for g in canonical_gates(d) if g not in resolved]
    if duplicated or missing:
        raise ValueError(f"{arg} must name each of {canonical_gates(d)} exactly once "
                         f"(aliases allowed), got {names}: duplicated {duplicated}, "
                         f"missing {missing}")
    return resolved, d


# --- arrays ----------------------------------------------------------------------


def _as_real(value, arg):
    try:
        a = np.asarray(value)
    except ValueError as err:  # ragged nested sequences
        raise ValueError(f"{arg}: not an array: {err}") from None
    if a.dtype == np.bool_ or a.dtype.kind not in "fiu":
        raise TypeError(f"{arg} must hold real numbers, got dtype {a.dtype}")
    return a


def _in_our_gate_order(value, arg, order, d, gate_axis, ndim=2):
    """value's gate blocks along gate_axis, permuted into our order g, o, i, f0, ...

    value is a blocked array whose blocks follow order (our names), or a
    {gate name: block} mapping (then order is not needed).
    """
    n_gates = 3 + d
    if isinstance(value, Mapping):
        if len(value) != n_gates:
            raise ValueError(f"{arg} must map the {n_gates} gates {canonical_gates(d)} to "
                             f"blocks, got keys {list(value)}")
        names, _ = _resolve_gate_order(list(value), arg)
        blocks = dict(zip(names, value.values()))
        try:
            return np.concatenate([_as_real(blocks[g], f"{arg}[{g!r}]")
                                   for g in canonical_gates(d)], axis=gate_axis)
        except ValueError as err:
            raise ValueError(f"{arg}: the gate blocks do not fit together: {err}") from None
    if order is None:
        raise ValueError(f"gate_order is required for {arg} given as one blocked array "
                         "(only {gate name: block} mappings carry their own order)")
    a = _as_real(value, arg)
    if a.ndim != ndim:
        raise ValueError(f"{arg} must be {ndim}-D, got shape {a.shape}")
    if a.shape[gate_axis] % n_gates or a.shape[gate_axis] == 0:
        raise ValueError(f"{arg} has shape {a.shape}: its gate axis must hold {n_gates} "
                         f"blocks of N >= 1 entries ({n_gates}*N)")
    n = a.shape[gate_axis] // n_gates
    source = [order.index(g) for g in canonical_gates(d)]  # source block of each of ours
    moved = np.moveaxis(a, gate_axis, -1)
    permuted = moved.reshape(moved.shape[:-1] + (n_gates, n))[..., source, :]
    return np.moveaxis(permuted.reshape(moved.shape), -1, gate_axis)


def _recurrent_list(w_recurrent, d, n, transposed):
    """The d recurrent blocks (arrays or mappings) in storage order."""
    if isinstance(w_recurrent, Mapping):
        return [w_recurrent]
    if isinstance(w_recurrent, (list, tuple)) and w_recurrent and all(
            isinstance(v, Mapping) or np.ndim(v) == 2 for v in w_recurrent):
        return list(w_recurrent)
    a = _as_real(w_recurrent, "w_recurrent")
    if a.ndim == 3:
        return list(a)
    in_axis = 1 if transposed else 0
    if a.ndim == 2 and a.shape[in_axis] == d * n:  # blocks stacked along the input axis
        return np.split(a, d, axis=in_axis)
    stacked = (f"({(3 + d) * n}, {d}*{n})" if transposed else f"({d}*{n}, {(3 + d) * n})")
    raise ValueError(f"w_recurrent has shape {a.shape}; give d={d} blocks (a sequence or a "
                     f"(d, ...) array) or one matrix {stacked} with the blocks stacked")


def _summed_bias(bias, order, d, n):
    if bias is None:
        return None
    if isinstance(bias, (list, tuple)) and bias and all(
            isinstance(v, Mapping) or (hasattr(v, "__array__") and np.ndim(v) > 0)
            for v in bias):
        # several vectors that the source adds up (e.g. PyTorch's b_ih + b_hh)
        return sum(_summed_bias(v, order, d, n) for v in bias)
    if isinstance(bias, Mapping):
        bias = {name: np.ravel(block) for name, block in bias.items()}
    else:
        bias = _as_real(bias, "bias").ravel()
        if bias.size != (3 + d) * n:
            raise ValueError(f"bias must hold {3 + d}*N = {(3 + d) * n} values (N={n}), "
                             f"got {bias.size}")
    b = _in_our_gate_order(bias, "bias", order, d, -1, ndim=1)
    if b.shape != ((3 + d) * n,):
        raise ValueError(f"bias must hold {3 + d}*N = {(3 + d) * n} values (N={n}), "
                         f"got {b.size}")
    return b


# --- public ----------------------------------------------------------------------


def from_gate_blocks(w_input, w_recurrent, bias=None, *, gate_order=None, axis_order=None,
                     transposed=False, hidden_size=None, dtype=None):
    """One direction's (weights (C + d*N, (3+d)*N), bias ((3+d)*N,)) in our layout.

    w_input: (C, G*N) input weights whose column blocks (N wide) follow gate_order,
        G = 3 + d; (G*N, C) if transposed (PyTorch's (out_features, in_features)).
    w_recurrent: the d recurrent matrices (N, G*N) ((G*N, N) if transposed), one per
        spatial axis, in axis_order: a sequence, a (d, ...) array, or one matrix
        with the blocks stacked along the input axis ((d*N, G*N) or (G*N, d*N)).
    bias: G*N values in gate_order (any shape, e.g. (G, N)); a list or tuple of
        arrays is summed (PyTorch's b_ih + b_hh); None means zeros.
    gate_order: the source's gate names, e.g. ("a", "i", "o", "f_y", "f_x"), or a
        string "a i o f_y f_x" / "ifgo" (letters). d = len(gate_order) - 3. Ours
        are g, o, i, f0..f(d-1); aliases: a/c/candidate/cell for g, f_<axis> for a
        forget gate (f_y, f_row, fx, f_axis1, ...), f for d = 1.
    axis_order: the spatial axis (int or name) of each recurrent block in storage
        order; default (0, ..., d-1). Names: 2-D y/row = 0, x/col = 1; 3-D
        z/depth/t = 0, y/row = 1, x/col = 2. E.g. ("x", "y"): the column axis' block
        comes first.
    Per-gate storage: w_input, bias and each recurrent block may be {gate name:
        block} mappings (blocks (C, N), (N, N), (N,), or transposed); gate_order may
        then be omitted.
    hidden_size: optional check of N. dtype: of the result (default: the inputs'
        float32/float64 dtype, else float64).
    """
    if not isinstance(transposed, (bool, np.bool_)):
        raise TypeError(f"transposed must be a bool, got {type(transposed).__name__}")
    if gate_order is not None:
        order, d = _resolve_gate_order(gate_order)
    elif isinstance(w_input, Mapping):
        order, d = None, len(w_input) - 3
        if not 1 <= d <= 3:
            raise ValueError(f"w_input must map 4, 5 or 6 gates to blocks, got {list(w_input)}")
    else:
        raise ValueError("gate_order is required unless w_input maps gate names to blocks")
    n_gates = 3 + d
    gate_axis = 0 if transposed else 1
    w_in = _in_our_gate_order(w_input, "w_input", order, d, gate_axis)
    n = w_in.shape[gate_axis] // n_gates
    if hidden_size is not None and hidden_size != n:
        raise ValueError(f"hidden_size={hidden_size}, but w_input {w_in.shape} holds "
                         f"{n_gates} gate blocks of N={n}")

    block_shape = (n_gates * n, n) if transposed else (n, n_gates * n)
    stored = _recurrent_list(w_recurrent, d, n, transposed)
    if len(stored) != d:
        raise ValueError(f"w_recurrent must hold d={d} blocks (one per spatial axis) of "
                         f"shape {block_shape}, got {len(stored)}")
    recurrent = []
    for k, block in enumerate(stored):
        block = _in_our_gate_order(block, f"w_recurrent[{k}]", order, d, gate_axis)
        if block.shape != block_shape:
            raise ValueError(f"w_recurrent[{k}] must have shape {block_shape} (N={n}, "
                             f"{n_gates} gates{', transposed' if transposed else ''}), "
                             f"got {block.shape}")
        recurrent.append(block)

    axes = (list(range(d)) if axis_order is None else
            [_axis_index(a, d, "axis_order") for a in _split_names(axis_order)])
    if sorted(axes) != list(range(d)):
        raise ValueError(f"axis_order must list each of the {d} spatial axes once, "
                         f"got {axis_order!r}")
    by_axis = [recurrent[axes.index(k)] for k in range(d)]  # our rows: axis 0, 1, ...

    b = _summed_bias(bias, order, d, n)
    if transposed:
        w_in, by_axis = w_in.T, [block.T for block in by_axis]
    if dtype is None:
        dtype = np.result_type(w_in, *by_axis, *([] if b is None else [b]))
        dtype = dtype if dtype in FLOAT_DTYPES else np.dtype(np.float64)
    elif np.dtype(dtype) not in FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {np.dtype(dtype)}")
    weights = np.concatenate([w_in, *by_axis], axis=0).astype(dtype)
    b = np.zeros(n_gates * n, dtype) if b is None else np.ascontiguousarray(b, dtype=dtype)
    return np.ascontiguousarray(weights), b


def _ndim_of(directions):
    """d from directions: corner names are 2-D, sign tuples have d entries."""
    return 2 if isinstance(directions[0], str) else len(directions[0])


def stack_directions(parts, directions, *, variant="slstm"):
    """Imported from per-direction (weights, bias) pairs, e.g. from_gate_blocks results.

    directions: one name or sign tuple per pair, in the same order.
    """
    parts = [(np.asarray(w), np.asarray(b)) for w, b in parts]
    if isinstance(directions, str):
        directions = (directions,)
    directions = tuple(e if isinstance(e, str) else tuple(e) for e in directions)
    if not parts or not directions:
        raise ValueError("parts and directions must hold at least one direction")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    d = _ndim_of(directions)
    parse_directions(directions, d, count=len(parts))  # validates names/signs and count
    directions = tuple(e if isinstance(e, str) else tuple(int(s) for s in e)
                       for e in directions)
    shapes = sorted({(w.shape, b.shape) for w, b in parts})
    if len(shapes) != 1:
        raise ValueError(f"parts must all have the same shapes, got {shapes}")
    (w_shape, b_shape), = shapes
    if len(w_shape) != 2 or w_shape[1] % (3 + d) or b_shape != (w_shape[1],):
        raise ValueError(f"parts: weights {w_shape} / bias {b_shape} do not fit a {d}-D "
                         f"cell (weights (C + {d}*N, {3 + d}*N), bias ({3 + d}*N,))")
    return Imported(np.stack([w for w, _ in parts]), np.stack([b for _, b in parts]),
                    directions, variant)


def _check_size(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def from_rnn2d(params, input_size, hidden_size, *, layout="original", dtype=None):
    """jpuigcerver/rnn2d LSTM parameters -> Imported(weights, bias, directions, variant).

    params: rnn2d's parameter vector, any shape holding it in C order (flat, or
    (4, (1 + K + 2*D) * 5 * D) split per direction). K = input_size, D = hidden_size.
    Per direction z = 0..3 a block [bias (5, D) | W (K, 5, D) | R1 (D, 5, D) |
    R2 (D, 5, D)]; layout says what the blocks mean (RNN2D_LAYOUTS):

    layout="original" (the default; rnn2d's first layout): gates (a, i, o, f_y,
        f_x); R1 = U_y (from h of the previous row), R2 = U_x (previous column);
        directions z = TL, TR, BL, BR; c = i*a + f_y*c_up + f_x*c_left and
        h = o*tanh(c): our "graves".
    layout="current" (rnn2d's current code): gates (i, f_y, f_x, o, a);
        R1 = U from h of the previous column, R2 = V from the previous row;
        directions z = TL, BL, TR, BR (z = 1 starts at the bottom-left corner);
        the halved cell c = i*a + (f_y*c_up + f_x*c_left)/2, h = o*tanh(c): our
        "halved".

    Either way a -> g, i -> i, o -> o, f_y -> f0 (rows, axis 0), f_x -> f1
    (columns, axis 1); our weights[z] rows are [W | h of the previous row |
    h of the previous column]. Returns weights (4, K + 2D, 5D), bias (4, 5D),
    the four directions in rnn2d's order and the variant. dtype: default
    params' float dtype, else float64.
    """
    if not isinstance(layout, str) or layout not in RNN2D_LAYOUTS:
        raise ValueError(f"layout must be one of {tuple(RNN2D_LAYOUTS)}, got {layout!r}")
    spec = RNN2D_LAYOUTS[layout]
    k = _check_size(input_size, "input_size")
    n = _check_size(hidden_size, "hidden_size")
    flat = _as_real(params, "params").reshape(-1)
    per_direction = (1 + k + 2 * n) * 5 * n
    if flat.size != 4 * per_direction:
        raise ValueError(
            f"params must hold 4 * (1 + K + 2*D) * 5 * D = 4 * (1 + {k} + 2*{n}) * 5 * {n} "
            f"= {4 * per_direction} values for input_size K={k}, hidden_size D={n}; "
            f"got {flat.size} (shape {np.shape(params)})")
    parts = []
    for block in flat.reshape(4, per_direction):
        bias, w, r1, r2 = np.split(block, np.cumsum([5 * n, k * 5 * n, n * 5 * n]))
        # (rows, 5, D) reshaped to (rows, 5D) is gate-major: blocks of D in gate order.
        parts.append(from_gate_blocks(
            w.reshape(k, 5 * n), [r1.reshape(n, 5 * n), r2.reshape(n, 5 * n)], bias,
            gate_order=spec.gate_order, axis_order=spec.axis_order, dtype=dtype))
    return stack_directions(parts, spec.directions, variant=spec.variant)


def to_layer(imported, *, dtype=None):
    """An MDLSTM2D (MDLSTM3D, MDLSTM for d = 1) holding imported's parameters.

    imported: an Imported or a (weights, bias, directions, variant) tuple.
    dtype: of the layer (default: that of the weights, float64 for integer weights).
    Built by MDLSTM.from_params, the constructor __init__ and load share: the
    same checks, the same errors.
    """
    weights, bias, directions, variant = imported
    weights, bias = np.asarray(weights), np.asarray(bias)
    if isinstance(directions, str):
        directions = (directions,)
    directions = tuple(directions)
    if not directions or weights.ndim not in (2, 3):
        raise ValueError(f"imported must hold weights (Z, C + d*N, (3+d)*N) and Z directions, "
                         f"got weights {weights.shape} and directions {directions!r}")
    d = _ndim_of(directions)
    if dtype is None:
        dtype = weights.dtype if weights.dtype in FLOAT_DTYPES else np.dtype(np.float64)
    # integer parameters (a converter's output never has them, a hand-made tuple may)
    weights = weights if weights.dtype.kind == "f" else weights.astype(dtype)
    bias = bias if bias.dtype.kind == "f" else bias.astype(dtype)
    cls = {2: MDLSTM2D, 3: MDLSTM3D}.get(d, MDLSTM)
    try:
        return cls.from_params(weights, bias, directions=directions, variant=variant,
                               dtype=dtype, ndim=d)
    except ValueError as err:
        raise ValueError(f"imported: {err}") from None


layer_from = to_layer
