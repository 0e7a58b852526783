"""Public backward (training) pass: argument checks and dispatch.

The gradients are exact for the function that forward computes (README "The
math"), with one convention: where a cell state saturates (|c_p| equals the
largest finite float of the dtype, the clip of the forward), the derivative of
c_p with respect to its unclipped value is taken as 0.

The checks of shapes, dtypes and options run before anything is computed. The
checks of the data (grad_h and grad_c finite, h, c and gates from a matching
forward) run where the data are read: in Python before the python backend, in
the numba kernel as it goes (the NumPy passes cost ~6 % of the digits backward).
Nothing the caller passes is ever written: all results are new arrays, dropped
when a check fails.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Union

import numpy as np

from . import _api, _reference

__all__ = ["backward", "backward_inplace"]

Directions = Union[None, str, Sequence[Union[str, Sequence[int]]]]


def _check_array(value, name, shape, dtype):
    """value must be a plain numpy array (numpy.memmap allowed, other subclasses
    refused like forward's arguments) of exactly dtype (never cast) and shape."""
    _api._plain_array(value, name)
    if value.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype} (that of x), got {value.dtype}")
    if value.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {value.shape}")
    return value


def _non_finite(name):
    return ValueError(f"{name} contains NaN or inf")


def _check_finite(value, name, sizes=None):
    """No NaN or inf in value (only each sample's valid region counts when
    sizes is given: the rest is ignored). The numba kernels check the same
    as they read the gradients."""
    if np.isfinite(value).all():
        return
    if sizes is not None:
        if all(np.isfinite(value[(bi,) + tuple(slice(0, int(s)) for s in size)]).all()
               for bi, size in enumerate(sizes)):
            return
    raise _non_finite(name)


def _read_only(a):
    """a as the one type the backward kernels are compiled for, whatever the
    caller's layout and flags: C-contiguous (a strided, Fortran-order or
    broadcast array is copied once) and read-only (a view: the kernels only
    read it). Each other layout or flag of any argument was a compile of its
    own (~80 s)."""
    a = np.ascontiguousarray(a)
    if a.flags.writeable:
        a = a.view()
        a.flags.writeable = False
    return a


def _run_kernel(driver, x, w, b, d, variant, sizes, signs, inplace, h_state, c_state, h, c,
                grad_h, grad_c, gates=None):
    """fastmdlstm._kernels.run_backward on canonical 5-D views, under forward's
    launch rules; raises the ValueError of what the kernel found: a NaN or inf
    in grad_h or grad_c (valid cells only), else h, c (or gates) not from a
    matching forward. gates: the forward's gate activations (run_backward's
    pre), or None to recompute them."""
    def canonical(a):
        if a is None:
            return _read_only(np.empty((0,) * 5, x.dtype))
        return _api._canonical(_read_only(a), d)

    # No gates: an empty read-only array, the given gates' type (one compile).
    run = functools.partial(_api._kernels.run_backward, pre=canonical(gates))
    result = _api._launch(
        driver, canonical(x), _read_only(w), _read_only(b), d,
        _api._kernels.VARIANTS[variant], sizes, signs, inplace,
        canonical(h_state), canonical(c_state), canonical(h), canonical(c), canonical(grad_h),
        canonical(grad_c), _api._threads(), run=run)
    grad_x5, grad_w, grad_b, grad_h_state5, grad_c_state5, flags = result
    kernels = _api._kernels
    if flags & kernels.BAD_GRAD_H:
        raise _non_finite("grad_h")
    if flags & kernels.BAD_GRAD_C:
        raise _non_finite("grad_c")
    if flags & kernels.MISMATCH:
        raise _reference.mismatch_error(gates=gates is not None)
    return grad_x5, grad_w, grad_b, grad_h_state5, grad_c_state5


def _as_given(grad, like):
    """grad in the shape and dtype of the caller's parameter array `like`."""
    return grad.reshape(like.shape).astype(like.dtype, copy=False)


def backward(
    x: np.ndarray,
    weights: np.ndarray,
    bias: np.ndarray,
    grad_h: np.ndarray,
    *,
    h: np.ndarray,
    c: np.ndarray,
    variant: str = "slstm",
    directions: Directions = None,
    sizes: np.ndarray | None = None,
    grad_c: np.ndarray | None = None,
    gates: np.ndarray | None = None,
    backend: str = "auto",
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of a forward pass with respect to x, weights and bias.

    The backward of ``forward(x, weights, bias, variant=variant,
    directions=directions, sizes=sizes, return_cell=True)``: given the
    gradients of a loss with respect to its outputs h (and c), returns the
    gradients of that loss with respect to x, weights and bias. Given the
    gates of ``forward(..., return_gates=True)`` too, it skips recomputing
    them (on the numba backend a matrix product of the forward's size and
    the activations, about a third of its work).

    Parameters
    ----------
    x : numpy.ndarray
        (B, *spatial, C), float32 or float64, 1 to 3 spatial axes: the input
        of the forward.
    weights, bias : numpy.ndarray
        (Z, C + d*N, (3+d)*N) (or 2-D for Z = 1) and (Z, (3+d)*N) (or 1-D):
        the parameters of the forward. Float parameters of the other dtype are
        cast to x's dtype for the computation, as forward does.
    grad_h : numpy.ndarray
        (B, *spatial, Z*N) of x's dtype, finite: gradient of the loss with
        respect to forward's h. Entries outside a sample's valid region are
        ignored.
    h, c : numpy.ndarray
        (B, *spatial, Z*N) of x's dtype: what ``forward(..., return_cell=True)``
        returned for these arguments. The cells are recomputed from x and the
        stored predecessor states (or from gates when given); a recomputed c
        or h that disagrees with the given one beyond rounding raises
        ValueError.
    variant : {"slstm", "graves", "halved", "stable"}
    directions : None, str or sequence
        As in forward (None: one scan from the origin corner).
    sizes : numpy.ndarray, optional
        (B, d) integer valid extents, as in forward.
    grad_c : numpy.ndarray, optional
        Gradient of the loss with respect to forward's c (same shape and dtype
        as grad_h, finite); None means zero.
    gates : numpy.ndarray, optional
        (B, *spatial, Z*(3+d)*N) of x's dtype: the gate activations that
        ``forward(..., return_gates=True)`` returned with h and c for these
        arguments (entries outside a sample's valid region are ignored; any
        strides, a non-contiguous array is copied once). Only read. The
        numba backend takes the gates from them instead of recomputing them
        (so it compares x, the weights and the bias with them only at each
        scan's first cell, whose gates need no predecessor), computes each
        cell's c and h from them and raises ValueError where those disagree
        with the given c, h beyond rounding; the python backend compares
        every entry with its own recomputation. Results are those of a call
        without gates (on the numba backend bitwise, given the numba
        forward's gates). None: recompute them.
    backend : {"auto", "numba", "python"}

    Returns
    -------
    grad_x : numpy.ndarray
        Shape and dtype of x; zero outside each sample's valid region.
    grad_weights, grad_bias : numpy.ndarray
        Shape and dtype of the weights and bias arguments.

    Raises
    ------
    TypeError
        An argument is not a numpy array of the right dtype (the error names it).
    ValueError
        Wrong shapes, non-finite grad_h/grad_c, bad options, or h/c (or
        gates) that do not come from the forward of these arguments.

    Notes
    -----
    Boundary states are zero (as in forward). Where a cell state saturates
    (|c| equals the largest finite float), the derivative of c with respect
    to its unclipped value is taken as 0. Nothing passed in is written.
    """
    x, d = _api._check_x(x)
    _api.check_variant(variant, d)
    batch, spatial, channels = x.shape[0], x.shape[1:-1], x.shape[-1]
    w, b, n = _api._check_params(weights, bias, d, channels, x.dtype)
    z = w.shape[0]
    signs = _api.parse_directions(directions, d, count=z)
    sizes, ragged = _api._check_sizes(sizes, batch, spatial)
    shape = (batch,) + spatial + (z * n,)
    _check_array(grad_h, "grad_h", shape, x.dtype)
    if grad_c is not None:
        _check_array(grad_c, "grad_c", shape, x.dtype)
    _check_array(h, "h", shape, x.dtype)
    _check_array(c, "c", shape, x.dtype)
    if gates is not None:
        _check_array(gates, "gates", shape[:-1] + (z * w.shape[2],), x.dtype)
    chosen, driver = _api._resolve_backend(backend, (batch, spatial, channels, n, z))
    item = x.dtype.itemsize
    padded = batch * math.prod(s + 1 for s in spatial) * n * item
    _api._check_memory(x.nbytes * 2 + 4 * padded, "backward of x with shape " + str(x.shape))
    if batch == 0 or 0 in spatial:
        grad_x, grad_w, grad_b = np.zeros_like(x), np.zeros_like(w), np.zeros_like(b)
    elif chosen == "numba":
        if gates is not None:
            if not gates.flags.c_contiguous:
                gates = np.ascontiguousarray(gates)  # the kernels' one compiled layout
        grad_x5, grad_w, grad_b, _, _ = _run_kernel(
            driver, x, w, b, d, variant, sizes, signs, False, None, None, h, c, grad_h, grad_c,
            gates)
        grad_x = grad_x5.reshape(x.shape)
        if ragged:
            _api._zero_outside(grad_x, sizes, spatial)
    else:
        _check_finite(grad_h, "grad_h", sizes if ragged else None)
        if grad_c is not None:
            _check_finite(grad_c, "grad_c", sizes if ragged else None)
        grad_x, grad_w, grad_b = _reference.backward(
            x, w, b, grad_h, grad_c, h, c, variant, signs, sizes, gates)
    return grad_x, _as_given(grad_w, weights), _as_given(grad_b, bias)


def backward_inplace(
    x: np.ndarray,
    weights: np.ndarray,
    bias: np.ndarray,
    h: np.ndarray,
    c: np.ndarray,
    grad_h: np.ndarray,
    *,
    grad_c: np.ndarray | None = None,
    variant: str = "slstm",
    backend: str = "auto",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Gradients of a forward_inplace call, including the boundary states.

    The backward of ``forward_inplace(x, weights, bias, h, c,
    variant=variant)``: one scan from the origin corner over padded state
    tensors whose index-0 entries (along any spatial axis) are the caller's
    boundary states.

    Parameters
    ----------
    x : numpy.ndarray
        (B, *S, C), float32 or float64, 1 to 3 spatial axes.
    weights, bias : numpy.ndarray
        One direction: (C + d*N, (3+d)*N) (or (1, ...)) and ((3+d)*N,) (or
        (1, ...)); cast to x's dtype for the computation.
    h, c : numpy.ndarray
        (B, *(S+1), N) of x's dtype: the state tensors as forward_inplace left
        them (boundary states and the written inner part). Only read. A
        recomputed c or h that disagrees with them raises ValueError.
    grad_h : numpy.ndarray
        (B, *S, N) of x's dtype, finite: gradient of the loss with respect to
        the written states h[:, 1:, ..., 1:].
    grad_c : numpy.ndarray, optional
        The same for c[:, 1:, ..., 1:]; None means zero.
    variant : {"slstm", "graves", "halved", "stable"}
    backend : {"auto", "numba", "python"}

    Returns
    -------
    grad_x : numpy.ndarray
        Shape and dtype of x.
    grad_weights, grad_bias : numpy.ndarray
        Shape and dtype of the weights and bias arguments.
    grad_h_state, grad_c_state : numpy.ndarray
        (B, *(S+1), N) of x's dtype: gradients with respect to the boundary
        entries of h and c (index 0 along some spatial axis); inner entries
        are 0.

    Raises
    ------
    TypeError
        An argument is not a numpy array of the right dtype (the error names it).
    ValueError
        Wrong shapes, non-finite grad_h/grad_c, bad options, more than one
        direction, or h/c that do not come from the forward of these arguments.

    Notes
    -----
    Where a cell state saturates (|c| equals the largest finite float), the
    derivative of c with respect to its unclipped value is taken as 0.
    Nothing passed in is written.
    """
    x, d = _api._check_x(x)
    _api.check_variant(variant, d)
    batch, spatial, channels = x.shape[0], x.shape[1:-1], x.shape[-1]
    w, b, n = _api._check_params(weights, bias, d, channels, x.dtype)
    if w.shape[0] != 1:
        raise ValueError(f"weights must hold one direction for backward_inplace, "
                         f"got Z={w.shape[0]}")
    state_shape = (batch,) + tuple(s + 1 for s in spatial) + (n,)
    inner_shape = (batch,) + spatial + (n,)
    _check_array(h, "h", state_shape, x.dtype)
    _check_array(c, "c", state_shape, x.dtype)
    _check_array(grad_h, "grad_h", inner_shape, x.dtype)
    if grad_c is not None:
        _check_array(grad_c, "grad_c", inner_shape, x.dtype)
    chosen, driver = _api._resolve_backend(backend, (batch, spatial, channels, n, 1))
    item = x.dtype.itemsize
    padded = math.prod(state_shape) * item
    _api._check_memory(x.nbytes + 4 * padded,
                       "backward_inplace of x with shape " + str(x.shape))
    if batch == 0 or 0 in spatial:
        grads = (np.zeros_like(x), np.zeros_like(w[0]), np.zeros_like(b[0]),
                 np.zeros(state_shape, x.dtype), np.zeros(state_shape, x.dtype))
    elif chosen == "numba":
        grad_x5, grad_w, grad_b, gh5, gc5 = _run_kernel(
            driver, x, w, b, d, variant, _api._full_sizes(batch, spatial),
            _api.parse_directions(None, d), True, h, c, None, None, grad_h, grad_c)
        grads = (grad_x5.reshape(x.shape), grad_w, grad_b,
                 gh5.reshape(state_shape), gc5.reshape(state_shape))
    else:
        _check_finite(grad_h, "grad_h")
        if grad_c is not None:
            _check_finite(grad_c, "grad_c")
        grads = _reference.scan_padded_backward(x, w[0], b[0], h, c, grad_h, grad_c,
                                                variant)
    grad_x, grad_w, grad_b, grad_h_state, grad_c_state = grads
    return (grad_x, _as_given(grad_w, weights), _as_given(grad_b, bias),
            grad_h_state, grad_c_state)
