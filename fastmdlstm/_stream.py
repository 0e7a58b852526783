"""Streams: a "tl" scan fed a pixel, a row or a frame at a time.

Stream2D keeps one row of state slots per sample: slot 0 holds the left
boundary of the current row, slot j + 1 the newest states of column j (the
current row's left of the stream's position, the previous row's from it on).
A step runs the cells of one pixel of every sample of the batch as one small
GEMM (the kernels' micro-kernel, _kernels._preactivation) and the kernels'
cell update (_kernels._cell_update): every cell is the same sequence of
operations as in forward / forward_inplace, so results are bitwise equal.

Stream3D keeps the previous frame: a frame is a d = 3 inplace problem of one
slice over a padded (B, 2, H+1, W+1, N) state tensor (slice 0: the previous
frame, slice 1: this one) run by the kernels' own drivers.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from . import _api

try:  # the package imports without numba; a stream needs it
    from numba import njit

    from . import _kernels
    from ._lowlevel import borrow
except ImportError:  # pragma: no cover - exercised in a subprocess test
    _kernels = None

__all__ = ["Stream2D", "Stream3D", "StreamState"]

_OPTS = {"cache": True, "nogil": True, "error_model": "numpy"}


# --- compiled steps ------------------------------------------------------------------


def _step(x, out, w, bias, variant, hs, cs, hl, cl, row, j, rows, c_prev, acc):
    """Pixel (row, j) of every sample: x (B, C) in, h (B, N) to out.

    hs, cs (B, W+1, N): the row of slots; hl, cl (B, R, N): the left boundary
    states of the first R rows (zero from row R on); rows (B, C + 2N),
    c_prev (B, 2, N), acc (B, 5N): scratch. All reads come before any write,
    so x may alias out.
    """
    x, out, hs, cs = borrow(x), borrow(out), borrow(hs), borrow(cs)
    rows, c_prev, acc = borrow(rows), borrow(c_prev), borrow(acc)
    batch, n_in = x.shape
    n = hs.shape[2]
    if j == 0:  # slot 0: the left boundary of this row
        if row < hl.shape[1]:
            hl_b, cl_b = borrow(hl), borrow(cl)
            for b in range(batch):
                _kernels._copy2(hl_b[b, row], cl_b[b, row], hs[b, 0], cs[b, 0])
        else:
            for b in range(batch):
                hs[b, 0, :] = 0
                cs[b, 0, :] = 0
    for b in range(batch):
        r = rows[b]
        for k in range(n_in):
            r[k] = x[b, k]
        # rows of W: input, then the previous row's h (axis 0), the previous column's
        _kernels._copy2(hs[b, j + 1], cs[b, j + 1], r[n_in:n_in + n], c_prev[b, 0])
        _kernels._copy2(hs[b, j], cs[b, j], r[n_in + n:n_in + 2 * n], c_prev[b, 1])
    _kernels._preactivation(rows, w, bias, 0, acc, batch)
    for b in range(batch):
        h_dst, c_dst = hs[b, j + 1], cs[b, j + 1]
        _kernels._activate(acc[b], n)
        _kernels._cell_update(acc[b], c_prev[b], 2, n, variant, h_dst, c_dst)
        dst = out[b]
        for r in range(n):
            dst[r] = h_dst[r]


def _row(x, out, w, bias, variant, hs, cs, hl, cl, row, rows, c_prev, acc):
    """Row `row`: x (B, W, C) in, h (B, W, N) to out, pixel after pixel."""
    for j in range(x.shape[1]):
        _step(x[:, j], out[:, j], w, bias, variant, hs, cs, hl, cl, row, j, rows, c_prev, acc)


if _kernels is not None:
    _step = njit(**_OPTS)(_step)
    _row = njit(**_OPTS)(_row)


# --- Python side ---------------------------------------------------------------------


class StreamState(NamedTuple):
    """A copy of a stream's state (see Stream2D.state and Stream3D.state)."""
    h: np.ndarray
    c: np.ndarray
    row: int
    col: int


def _count(value, name):
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _stream_params(weights, bias, d, dtype, variant):
    """(weights (1, C + dN, (3+d)N), bias (1, (3+d)N), C, N, dtype, variant code),
    the stream's own aligned copies."""
    if _kernels is None:
        raise RuntimeError("fastmdlstm's streams need numba, which cannot be imported")
    variant = _api.check_variant(variant, d)
    for name, value in (("weights", weights), ("bias", bias)):
        _api._plain_array(value, name)
        if not _api._is_float(value.dtype):
            raise TypeError(f"{name} must have a float32 or float64 dtype, got {value.dtype}")
    if dtype is None:
        dtype = weights.dtype.newbyteorder("=")
    dtype = np.dtype(dtype)
    if dtype not in _api.FLOAT_DTYPES:
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    if weights.ndim not in (2, 3):
        raise ValueError(f"weights must be 2-D or 3-D (1, C + {d}*N, {3 + d}*N), "
                         f"got ndim={weights.ndim}")
    rows, gates = weights.shape[-2:]
    if gates == 0 or gates % (3 + d):
        raise ValueError(f"weights has {gates} columns; a {d}-D cell needs {3 + d}*N "
                         f"(gate blocks g, o, i and {d} forget gates)")
    n = gates // (3 + d)
    channels = rows - d * n
    if channels < 1:
        raise ValueError(f"weights has {rows} rows; with N={n} a {d}-D cell needs "
                         f"C + {d}*N rows with C >= 1 input channels")
    w, b, n = _api._check_params(weights, bias, d, channels, dtype)
    if w.shape[0] != 1:
        raise ValueError(f"weights must hold one direction for a stream, got Z={w.shape[0]}")
    # Own copies: a stream outlives the call, and the caller may change its arrays.
    return _api._aligned(np.array(w), dtype), np.array(b), channels, n, dtype, \
        _kernels.VARIANTS[variant]



def _check_in(value, name, shape, dtype):
    """value as the input of a step: a float array of the stream's dtype and shape."""
    _api._as_float_array(value, name)
    if value.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype} (the stream's), got {value.dtype}")
    if value.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {value.shape}")
    return value


def _check_state(value, name, shape, dtype):
    """A boundary state given to reset (copied, so any float array of the shape)."""
    _api._plain_array(value, name)
    if not _api._is_float(value.dtype):
        raise TypeError(f"{name} must have a float32 or float64 dtype, got {value.dtype}")
    if value.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {value.shape}")
    return value.astype(dtype, copy=False)


def _pair(h, c, names, shape, dtype, axis=1):
    """Boundary states h, c (either may be None: zeros) of shape, or of any
    extent along `axis` when shape[axis] is None; (h, c) as fresh arrays."""
    if h is None and c is None:
        shape = tuple(0 if s is None else s for s in shape)
        return np.zeros(shape, dtype), np.zeros(shape, dtype)
    given, name = (h, names[0]) if h is not None else (c, names[1])
    if shape[axis] is None:  # any extent R along axis: that of the array given
        _api._plain_array(given, name)
        if given.ndim != len(shape):
            wanted = tuple("R" if s is None else s for s in shape)
            raise ValueError(f"{name} must have shape {wanted} with any R >= 0, got "
                             f"{given.shape}".replace("'", ""))
        shape = shape[:axis] + (given.shape[axis],) + shape[axis + 1:]
    out = []
    for value, name in zip((h, c), names):
        out.append(np.zeros(shape, dtype) if value is None
                   else np.array(_check_state(value, name, shape, dtype)))
    return tuple(out)


class Stream2D:
    """A "tl" scan of a 2-D spatial LSTM fed one pixel or one row at a time.

    Results are bitwise equal to `forward_inplace` (and, with zero boundary
    states, to `forward`) on the image the stream has been fed, whatever the
    mix of `row` and `pixel` calls. Rows are not limited in number: a stream
    runs over an image of unbounded height, `width` pixels wide.

    Parameters
    ----------
    weights : ndarray, shape (C + 2N, 5N) or (1, C + 2N, 5N)
        One direction's weights (layout as in `forward`); C and N are read
        from the shapes of weights. Copied (cast to dtype).
    bias : ndarray, shape (5N,) or (1, 5N)
    batch : int
        B, the samples fed together.
    width : int
        W, the pixels of a row.
    variant : {"slstm", "graves", "halved", "stable"}
    dtype : float32 or float64, optional
        The stream's dtype (inputs and outputs); default: that of weights.

    Every argument is checked once, here; `pixel` checks only its input's
    type, dtype and shape.
    """

    def __init__(self, weights, bias, *, batch, width, variant="slstm", dtype=None):
        self._batch = _count(batch, "batch")
        self._width = _count(width, "width")
        (self._w, self._b, self.channels, self.hidden, self.dtype,
         self._variant) = _stream_params(weights, bias, 2, dtype, variant)
        self.variant = variant
        b, w_, c, n, dt = self._batch, self._width, self.channels, self.hidden, self.dtype
        self._px_shape, self._px_out = (b, c), (b, n)
        self._row_shape, self._row_out = (b, w_, c), (b, w_, n)
        self._hs = np.zeros((b, w_ + 1, n), dt)
        self._cs = np.zeros((b, w_ + 1, n), dt)
        self._rows = np.zeros((b, c + 2 * n), dt)
        self._c_prev = np.zeros((b, 2, n), dt)
        self._acc = _kernels._aligned_zeros((b, 5 * n), dt)  # vectors never straddle a line
        self._out_ok = None  # the last out buffer of pixel() that passed the checks
        self.reset()

    def reset(self, h0=None, c0=None, h_left=None, c_left=None):
        """Start a new image at row 0, column 0, with these boundary states.

        Parameters
        ----------
        h0, c0 : ndarray, shape (B, W, N), optional
            The states above row 0 (forward_inplace's h[:, 0, 1:], c[:, 0, 1:]).
            Default zeros.
        h_left, c_left : ndarray, shape (B, R, N), optional
            The states left of column 0 of rows 0 .. R-1 (forward_inplace's
            h[:, 1:R+1, 0], c[:, 1:R+1, 0]), any R >= 0; rows from R on have
            zero left boundary states. Default R = 0.

        Any float dtype; copied in the stream's dtype. The corner state
        forward_inplace's h[:, 0, 0] is never read by a "tl" scan.
        """
        b, n, dt = self._batch, self.hidden, self.dtype
        top_h, top_c = _pair(h0, c0, ("h0", "c0"), (b, self._width, n), dt)
        left_h, left_c = _pair(h_left, c_left, ("h_left", "c_left"), (b, None, n), dt)
        self._hs[:, 1:] = top_h
        self._cs[:, 1:] = top_c
        self._hl, self._cl = left_h, left_c
        self._row_at, self._col = 0, 0

    @property
    def state(self) -> StreamState:
        """A copy of the slots and the position: h, c (B, W, N) hold the states
        of the row the stream is in left of column `col`, and of the row above
        from `col` on; `row` counts finished rows, `col` the pixels done of the
        current one. After a whole row (col 0), `reset(h0=state.h,
        c0=state.c)` goes on bitwise as if the stream had not been reset
        (with zero left boundary states)."""
        return StreamState(self._hs[:, 1:].copy(), self._cs[:, 1:].copy(),
                           self._row_at, self._col)

    @property
    def position(self) -> tuple[int, int]:
        """(row, col) of the next pixel."""
        return self._row_at, self._col

    def pixel(self, x_px, out=None):
        """Consume one pixel of every sample, left to right, then the next row.

        Parameters
        ----------
        x_px : ndarray, shape (B, C)
            The stream's dtype, any strides. It may share memory with out.
        out : ndarray, shape (B, N), optional
            Filled with h and returned. Checked the first time a buffer is
            passed (the checks are cached for the same object).

        Returns
        -------
        h : ndarray, shape (B, N)
        """
        if type(x_px) is not np.ndarray or x_px.dtype != self.dtype or \
                x_px.shape != self._px_shape:
            _check_in(x_px, "x_px", self._px_shape, self.dtype)
        if out is None:
            out = np.empty(self._px_out, self.dtype)
        elif out is not self._out_ok:
            self._out_ok = self._check_out(out, self._px_out, [])
        col = self._col
        _step(x_px, out, self._w, self._b, self._variant, self._hs, self._cs, self._hl,
              self._cl, self._row_at, col, self._rows, self._c_prev, self._acc)
        col += 1
        if col == self._width:
            self._row_at += 1
            col = 0
        self._col = col
        return out

    def row(self, x_row, out=None):
        """Consume one row of every sample.

        Parameters
        ----------
        x_row : ndarray, shape (B, W, C)
            The stream's dtype, any strides.
        out : ndarray, shape (B, W, N), optional
            Filled with h and returned; must not share memory with x_row.

        Returns
        -------
        h : ndarray, shape (B, W, N)

        Raises
        ------
        RuntimeError
            A row is half done: pixel() has consumed part of it.
        """
        _check_in(x_row, "x_row", self._row_shape, self.dtype)
        if self._col:
            raise RuntimeError(
                f"row() called with row {self._row_at} half done: pixel() has consumed "
                f"{self._col} of its {self._width} pixels; finish the row with pixel() "
                "or start again with reset()")
        if out is None:
            out = np.empty(self._row_out, self.dtype)
        else:
            self._check_out(out, self._row_out, [("x_row", x_row)])
        _row(x_row, out, self._w, self._b, self._variant, self._hs, self._cs, self._hl,
             self._cl, self._row_at, self._rows, self._c_prev, self._acc)
        self._row_at += 1
        return out

    def _check_out(self, out, shape, others):
        return _api._check_buffer(out, "out", shape, self.dtype, others)


class Stream3D:
    """A "tl" scan of a 3-D spatial LSTM fed one frame (B, H, W, C) at a time.

    Keeps the previous frame's states; results are bitwise equal to
    `forward_inplace` (and, with zero boundary states, to `forward`) on the
    volume (B, D, H, W, C) of the frames fed so far. Frames run on the
    kernels' parallel drivers.

    Parameters
    ----------
    weights : ndarray, shape (C + 3N, 6N) or (1, C + 3N, 6N)
    bias : ndarray, shape (6N,) or (1, 6N)
    batch, height, width : int
        B, H, W.
    variant : {"slstm", "graves", "halved", "stable"}
    dtype : float32 or float64, optional
        Default: that of weights.
    """

    def __init__(self, weights, bias, *, batch, height, width, variant="slstm",
                 dtype=None):
        self._batch = _count(batch, "batch")
        self._height = _count(height, "height")
        self._width = _count(width, "width")
        (self._w, self._b, self.channels, self.hidden, self.dtype,
         self._variant) = _stream_params(weights, bias, 3, dtype, variant)
        self.variant = variant
        b, hh, ww, n, dt = self._batch, self._height, self._width, self.hidden, self.dtype
        self._frame_shape = (b, hh, ww, self.channels)
        self._frame_out = (b, hh, ww, n)
        self._h = np.zeros((b, 2, hh + 1, ww + 1, n), dt)  # slice 0: the previous frame
        self._c = np.zeros_like(self._h)
        self._sizes = np.tile(np.array([[1, hh, ww]], np.int64), (b, 1))
        self._signs = np.ones((1, 3), np.int64)
        self._empty = np.empty((0,) * 5, dt)
        self.reset()

    def reset(self, h0=None, c0=None, h_top=None, c_top=None, h_left=None, c_left=None):
        """Start a new volume at frame 0 with these boundary states (default zeros).

        Parameters
        ----------
        h0, c0 : ndarray, shape (B, H, W, N), optional
            The states before frame 0 (forward_inplace's h[:, 0, 1:, 1:]).
        h_top, c_top : ndarray, shape (B, F, W, N), optional
            The states above row 0 of frames 0 .. F-1 (h[:, 1:F+1, 0, 1:]), any F.
        h_left, c_left : ndarray, shape (B, F, H, N), optional
            The states left of column 0 of frames 0 .. F-1 (h[:, 1:F+1, 1:, 0]).

        Frames beyond those given have zero top and left boundary states. Any
        float dtype; copied. The edges of forward_inplace's padded tensors
        (two indices 0) are never read by a "tl" scan.
        """
        b, hh, ww, n, dt = self._batch, self._height, self._width, self.hidden, self.dtype
        prev_h, prev_c = _pair(h0, c0, ("h0", "c0"), (b, hh, ww, n), dt)
        self._top = _pair(h_top, c_top, ("h_top", "c_top"), (b, None, ww, n), dt)
        self._left = _pair(h_left, c_left, ("h_left", "c_left"), (b, None, hh, n), dt)
        self._h[:, 0, 1:, 1:] = prev_h
        self._c[:, 0, 1:, 1:] = prev_c
        self._frame_at = 0

    @property
    def state(self) -> StreamState:
        """A copy of the last frame's states h, c (B, H, W, N) (the boundary
        before frame 0 until a frame is fed), row = frames done, col = 0."""
        return StreamState(self._h[:, 0, 1:, 1:].copy(), self._c[:, 0, 1:, 1:].copy(),
                           self._frame_at, 0)

    def frame(self, x_frame, out=None):
        """Consume one frame of every sample.

        Parameters
        ----------
        x_frame : ndarray, shape (B, H, W, C)
            The stream's dtype, any strides.
        out : ndarray, shape (B, H, W, N), optional
            Filled with h and returned; must not share memory with x_frame.

        Returns
        -------
        h : ndarray, shape (B, H, W, N)
        """
        x = _check_in(x_frame, "x_frame", self._frame_shape, self.dtype)
        if out is None:
            out = np.empty(self._frame_out, self.dtype)
        else:
            _api._check_buffer(out, "out", self._frame_out, self.dtype, [("x_frame", x)])
        k, h, c = self._frame_at, self._h, self._c
        for state, (top, left) in ((h, (self._top[0], self._left[0])),
                                   (c, (self._top[1], self._left[1]))):
            state[:, 1, 0, 1:] = top[:, k] if k < top.shape[1] else 0
            state[:, 1, 1:, 0] = left[:, k] if k < left.shape[1] else 0
        b, hh, ww = self._batch, self._height, self._width
        _, driver = _api._resolve_backend("numba", (b, (1, hh, ww), self.channels,
                                                    self.hidden, 1))
        problem = _kernels.Forward(
            x[:, None], self._w, self._b, 3, self.hidden, self._variant, self._sizes,
            self._signs, True, h, c, self._empty, self._empty, self._empty)
        _api._launch(driver, problem, _kernels.DEFAULT_GROUP, _api._threads())
        out[...] = h[:, 1, 1:, 1:]
        h[:, 0, 1:, 1:] = h[:, 1, 1:, 1:]
        c[:, 0, 1:, 1:] = c[:, 1, 1:, 1:]
        self._frame_at += 1
        return out
