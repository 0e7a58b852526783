"""PyTorch integration: the forward and backward as custom ops, and nn.Modules.

Import it explicitly (``import fastmdlstm.torch``); it needs PyTorch 2.4 or newer
(``pip install "fastmdlstm[torch]"``). Nothing else in fastmdlstm imports torch.

- ``torch.ops.fastmdlstm.mdlstm(x, weights, bias, variant, directions, sizes,
  keep_gates=False)`` returns ``(h, c, gates)``: `fastmdlstm.forward` with
  ``return_cell=True`` on CPU tensors, channel-last (B, *spatial, C) ->
  (B, *spatial, Z*N), d = 1, 2 or 3 spatial axes. ``directions`` is the flat
  list of the Z sign tuples (Z*d entries of +1/-1); ``sizes`` an optional
  (B, d) int64 tensor. With ``keep_gates`` gates holds the gate activations
  (B, *spatial, Z*(3+d)*N) of ``forward(..., return_gates=True)``, else it is
  an empty tensor; it is not differentiable (saved for the backward only).
- Its autograd formula calls a second op, ``torch.ops.fastmdlstm.mdlstm_backward``,
  which wraps `fastmdlstm.backward` (gradients of x, weights and bias from those
  of h and c; given the kept gates it skips recomputing them). Both ops have
  fake (meta) implementations, so they work under ``torch.compile`` and pass
  ``torch.library.opcheck``.
- `mdlstm` is the friendly entry point (direction names, argument checks);
  `MDLSTM2d` and `MDLSTM3d` are modules holding the parameters.

Tensors and arrays share memory where possible: inputs are read through
``tensor.numpy()`` views (any strides: the kernels read x in place) and the
results are wrapped with ``torch.from_numpy`` (no copies).
"""

from typing import Optional, Union

import numpy as np

try:  # absolute import: this module's own name does not shadow the torch package
    import torch
    from torch import nn
except ImportError as exc:  # pragma: no cover - torch is installed wherever tests run
    raise ImportError(
        "fastmdlstm.torch needs PyTorch >= 2.4; install it with "
        "'pip install \"fastmdlstm[torch]\"'") from exc

if not hasattr(torch, "library") or not hasattr(torch.library, "custom_op"):  # pragma: no cover
    raise ImportError(f"fastmdlstm.torch needs PyTorch >= 2.4 (torch.library.custom_op), "
                      f"found {torch.__version__}")

from . import _api, _backward

__all__ = ["mdlstm", "MDLSTM2d", "MDLSTM3d", "MDLSTMNd"]

FLOAT_DTYPES = (torch.float32, torch.float64)


# --- tensors <-> arrays ------------------------------------------------------------


def _array(t):
    """A NumPy view of a CPU tensor (no copy, whatever its strides)."""
    return t.detach().numpy()


def _signs(directions, d):
    """The flat list of Z*d signs as the (Z, d) sign tuples fastmdlstm takes."""
    signs = [int(s) for s in directions]
    if d == 0 or len(signs) % d:
        raise ValueError(f"directions must hold Z*d signs (d={d}), got {len(signs)}")
    return [tuple(signs[k:k + d]) for k in range(0, len(signs), d)]


def _sizes_array(sizes):
    return None if sizes is None else _array(sizes)


# --- the ops -------------------------------------------------------------------------

_FORWARD_SCHEMA = ("(Tensor x, Tensor weights, Tensor bias, str variant, int[] directions, "
                   "Tensor? sizes, bool keep_gates=False) -> (Tensor, Tensor, Tensor)")
_BACKWARD_SCHEMA = ("(Tensor x, Tensor weights, Tensor bias, Tensor h, Tensor c, "
                    "Tensor grad_h, Tensor? grad_c, str variant, int[] directions, "
                    "Tensor? sizes, Tensor? gates=None) -> (Tensor, Tensor, Tensor)")


@torch.library.custom_op("fastmdlstm::mdlstm", mutates_args=(), device_types="cpu",
                         schema=_FORWARD_SCHEMA)
def _mdlstm_op(x, weights, bias, variant, directions, sizes, keep_gates=False):
    """fastmdlstm.forward(..., return_cell=True) on channel-last CPU tensors; the
    gates' activations too with keep_gates (else an empty tensor)."""
    d = x.dim() - 2
    result = _api.forward(_array(x), _array(weights), _array(bias), variant=variant,
                          directions=_signs(directions, d), sizes=_sizes_array(sizes),
                          return_cell=True, return_gates=bool(keep_gates))
    if not keep_gates:
        result = (*result, np.empty((0,), result[0].dtype))
    return tuple(torch.from_numpy(a) for a in result)


def _gates_shape(x, weights, keep_gates):
    return (*x.shape[:-1], weights.shape[0] * weights.shape[2]) if keep_gates else (0,)


@_mdlstm_op.register_fake
def _mdlstm_fake(x, weights, bias, variant, directions, sizes, keep_gates=False):
    d = x.dim() - 2
    z, gates = weights.shape[0], weights.shape[2]
    shape = (*x.shape[:-1], z * (gates // (3 + d)))
    return (x.new_empty(shape), x.new_empty(shape),
            x.new_empty(_gates_shape(x, weights, keep_gates)))


@torch.library.custom_op("fastmdlstm::mdlstm_backward", mutates_args=(), device_types="cpu",
                         schema=_BACKWARD_SCHEMA)
def _mdlstm_backward_op(x, weights, bias, h, c, grad_h, grad_c, variant, directions, sizes,
                        gates=None):
    """fastmdlstm.backward: gradients of x, weights and bias (given the kept
    gates, without recomputing them)."""
    d = x.dim() - 2
    # Gradients from autograd are often expanded views (zero strides, e.g. the
    # backward of a sum); one contiguous copy keeps the kernels on one layout.
    grad_c = None if grad_c is None else _array(grad_c.contiguous())
    grads = _backward.backward(
        _array(x), _array(weights), _array(bias), _array(grad_h.contiguous()),
        h=_array(h), c=_array(c), variant=variant, directions=_signs(directions, d),
        sizes=_sizes_array(sizes), grad_c=grad_c,
        gates=None if gates is None else _array(gates))
    return tuple(torch.from_numpy(np.ascontiguousarray(g)) for g in grads)


@_mdlstm_backward_op.register_fake
def _mdlstm_backward_fake(x, weights, bias, h, c, grad_h, grad_c, variant, directions, sizes,
                          gates=None):
    # Contiguous, as the real results are, whatever the inputs' strides.
    return x.new_empty(x.shape), weights.new_empty(weights.shape), bias.new_empty(bias.shape)


def _setup_context(ctx, inputs, output):
    x, weights, bias, variant, directions, sizes, keep_gates = inputs
    h, c, gates = output
    ctx.mark_non_differentiable(gates)
    ctx.save_for_backward(x, weights, bias, h, c, sizes, gates if keep_gates else None)
    ctx.variant, ctx.directions = variant, directions


def _backward_formula(ctx, grad_h, grad_c, _grad_gates):
    x, weights, bias, h, c, sizes, gates = ctx.saved_tensors
    if grad_h is None:  # only c was used
        grad_h = torch.zeros_like(h)
    grad_x, grad_w, grad_b = torch.ops.fastmdlstm.mdlstm_backward(
        x, weights, bias, h, c, grad_h, grad_c, ctx.variant, ctx.directions, sizes, gates)
    return grad_x, grad_w, grad_b, None, None, None, None


_mdlstm_op.register_autograd(_backward_formula, setup_context=_setup_context)


# --- the friendly entry point --------------------------------------------------------


def _check_tensor(t, name, dtype=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} is on device {t.device}; fastmdlstm runs on the CPU only "
                         f"(move it with {name}.cpu())")
    if dtype is None and t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype torch.float32 or torch.float64, got {t.dtype}")
    if dtype is not None and t.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype} (that of x), got {t.dtype}")
    return t


def _check_shapes(x, weights, bias, d):
    """The shape rules of fastmdlstm.forward, checked before the op is called."""
    if weights.dim() != 3:
        raise ValueError(f"weights must be 2-D or 3-D (Z, C + {d}*N, {3 + d}*N), "
                         f"got {weights.dim()} dimensions")
    z, rows, gates = weights.shape
    if z == 0 or gates == 0 or gates % (3 + d):
        raise ValueError(f"weights has shape {tuple(weights.shape)}; a {d}-D cell needs "
                         f"Z >= 1 and {3 + d}*N columns (gate blocks g, o, i and {d} "
                         "forget gates)")
    n, channels = gates // (3 + d), x.shape[-1]
    if rows != channels + d * n:
        raise ValueError(f"weights has {rows} rows; x has {channels} channels and N={n}, "
                         f"so a {d}-D cell needs C + {d}*N = {channels + d * n} rows")
    if tuple(bias.shape) != (z, gates):
        raise ValueError(f"bias must have shape ({z}, {gates}) to match weights "
                         f"{tuple(weights.shape)}, got {tuple(bias.shape)}")


def _simple_directions(directions, d):
    """The flat sign list of well-formed directions, in plain Python (torch.compile
    traces it), or None for anything else."""
    if directions is None:
        return [1] * d
    if isinstance(directions, str) or (isinstance(directions, tuple) and all(
            isinstance(s, int) for s in directions)):
        directions = [directions]
    if not isinstance(directions, (list, tuple)):
        return None
    flat = []
    for entry in directions:
        if isinstance(entry, str):
            if d != 2 or entry not in _api.DIRECTION_NAMES:
                return None
            entry = _api.DIRECTION_NAMES[entry]
        if not isinstance(entry, (list, tuple)) or len(entry) != d or not all(
                type(s) is int and s in (1, -1) for s in entry):
            return None
        flat.extend(entry)
    return flat


def _flat_directions(directions, d, z):
    """Names or sign tuples as the flat sign list the op takes (validated)."""
    flat = _simple_directions(directions, d)
    if flat is None or len(flat) != z * d:  # parse_directions raises the precise error
        flat = [int(s) for s in _api.parse_directions(directions, d, count=z).ravel()]
    return flat


def _sizes_tensor(sizes, batch, d):
    if sizes is None:
        return None
    if not isinstance(sizes, torch.Tensor):
        sizes = torch.as_tensor(np.asarray(sizes))
    if sizes.device.type != "cpu":
        raise ValueError(f"sizes is on device {sizes.device}; pass a CPU tensor")
    if sizes.dtype.is_floating_point or sizes.dtype.is_complex or sizes.dtype == torch.bool:
        raise TypeError(f"sizes must be an integer tensor, got {sizes.dtype}")
    if tuple(sizes.shape) != (batch, d):
        raise ValueError(f"sizes must have shape (B, d) = ({batch}, {d}), "
                         f"got {tuple(sizes.shape)}")
    return sizes.to(torch.int64)


def mdlstm(x: torch.Tensor, weights: torch.Tensor, bias: torch.Tensor, *,
           variant: str = "slstm", directions=None,
           sizes: Optional[Union[torch.Tensor, np.ndarray]] = None):
    """Differentiable multi-dimensional LSTM on channel-last CPU tensors.

    Parameters
    ----------
    x : Tensor, shape (B, *spatial, C)
        float32 or float64, on the CPU, 1 to 3 spatial axes (d = x.dim() - 2),
        any strides (read in place).
    weights : Tensor, shape (Z, C + d*N, (3+d)*N), or (C + d*N, (3+d)*N) for Z = 1
        x's dtype; layout as in `fastmdlstm.forward`.
    bias : Tensor, shape (Z, (3+d)*N), or ((3+d)*N,) for Z = 1
        x's dtype.
    variant : {"slstm", "graves", "halved", "stable"} ("stable": 2-D only)
    directions : optional
        As in `fastmdlstm.forward`: names ("tl", "tr", "bl", "br", 2-D) or sign
        tuples, one per weights[z]; default one scan from the origin corner.
    sizes : integer Tensor or array, shape (B, d), optional
        Each sample's valid extent, as in `fastmdlstm.forward`.

    Returns
    -------
    h, c : Tensor, shape (B, *spatial, Z*N)
        Hidden and cell states (direction z in channels [z*N, (z+1)*N)); both
        take part in autograd. When a gradient can flow (grad mode on and an
        input requiring it), the op also keeps the gates' activations
        ((3+d)*N values per cell and direction) for the backward, which then
        skips recomputing them.

    Raises
    ------
    TypeError
        Not tensors, dtypes other than float32/float64, parameters of another
        dtype than x, non-integer sizes.
    ValueError
        Tensors not on the CPU, wrong shapes, bad variant or directions.
    """
    _check_tensor(x, "x")
    _check_tensor(weights, "weights", x.dtype)
    _check_tensor(bias, "bias", x.dtype)
    d = x.dim() - 2
    if not 1 <= d <= 3:
        raise ValueError(f"x must have shape (B, *spatial, C) with 1 to 3 spatial axes, "
                         f"got {x.dim()} dimensions")
    _api.check_variant(variant, d)
    if weights.dim() == 2:
        weights = weights.unsqueeze(0)
    if bias.dim() == 1 and weights.shape[0] == 1:
        bias = bias.unsqueeze(0)
    _check_shapes(x, weights, bias, d)
    flat = _flat_directions(directions, d, weights.shape[0])
    sizes = _sizes_tensor(sizes, x.shape[0], d)
    # Keep the gates' activations only where a backward can follow: the
    # backward then skips recomputing them; inference allocates nothing more.
    keep_gates = torch.is_grad_enabled() and (
        x.requires_grad or weights.requires_grad or bias.requires_grad)
    h, c, _ = torch.ops.fastmdlstm.mdlstm(x, weights, bias, variant, flat, sizes, keep_gates)
    return h, c


# --- modules -------------------------------------------------------------------------


class MDLSTMNd(nn.Module):
    """A multi-dimensional LSTM layer over d spatial axes (a base for MDLSTM2d/3d).

    Parameters ``weight`` (Z, C + d*N, (3+d)*N) and ``bias`` (Z, (3+d)*N),
    initialised by `fastmdlstm.init_params` (layout: README "The math").

    Layout of the input and output (Z directions, ``hidden_size`` N):

    - ``channels_last=False`` (default, PyTorch's convention): x is
      (B, C, *spatial), the output (B, Z*N, *spatial). The output is a
      permuted view of the channel-last result (no copy); x is read in place
      with its strides (a tensor in ``torch.channels_last`` memory format is
      read in its natural order).
    - ``channels_last=True``: x is (B, *spatial, C), the output (B, *spatial, Z*N)
      (contiguous), as in `fastmdlstm.forward`.

    Direction z fills output channels [z*N, (z+1)*N).
    """

    ndim = None  # d, fixed by the subclasses

    def __init__(self, input_size: int, hidden_size: int, directions=None,
                 variant: str = "slstm", channels_last: bool = False,
                 dtype: torch.dtype = torch.float32, seed=None, *, ndim: Optional[int] = None):
        super().__init__()
        d = self.ndim if ndim is None else ndim
        if d is None or (self.ndim is not None and d != self.ndim) or d not in (1, 2, 3):
            raise ValueError(f"ndim must be 1, 2 or 3 (fixed by {type(self).__name__}), "
                             f"got {ndim!r}")
        _api.check_variant(variant, d)
        if dtype not in FLOAT_DTYPES:
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        if directions is None:
            directions = ("tl",) if d == 2 else ((1,) * d,)
        signs = _api.parse_directions(directions, d)
        weights, bias = _api.init_params(
            input_size, hidden_size, directions=len(signs),
            dtype=np.float32 if dtype == torch.float32 else np.float64, seed=seed, ndim=d,
            variant=variant)
        self.input_size, self.hidden_size = int(input_size), int(hidden_size)
        self.spatial_ndim = d
        self.directions = [tuple(int(s) for s in row) for row in signs]
        self.variant = variant
        self.channels_last = bool(channels_last)
        self.weight = nn.Parameter(torch.from_numpy(weights))
        self.bias = nn.Parameter(torch.from_numpy(bias))

    @property
    def output_size(self) -> int:
        """Z*N, the output channels."""
        return len(self.directions) * self.hidden_size

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, directions={self.directions}, "
                f"variant={self.variant!r}, channels_last={self.channels_last}")

    def forward(self, x: torch.Tensor, sizes: Optional[torch.Tensor] = None,
                return_cell: bool = False):
        """The layer's output h (and the cell states c when return_cell).

        Parameters
        ----------
        x : Tensor
            (B, C, *spatial), or (B, *spatial, C) with channels_last; the
            parameters' dtype, on the CPU.
        sizes : LongTensor, shape (B, d), optional
            Each sample's valid extent along the spatial axes (in spatial
            order, whatever the layout), at the origin corner; the output is
            exactly 0 outside it and the padding's content is ignored.
        return_cell : bool
            Also return c, in the same layout as h.
        """
        d = self.spatial_ndim
        if not isinstance(x, torch.Tensor) or x.dim() != d + 2:
            layout = "(B, *spatial, C)" if self.channels_last else "(B, C, *spatial)"
            got = x.dim() if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a tensor of shape {layout} with {d} spatial axes, "
                             f"got {got}")
        if x.dtype != self.weight.dtype:
            raise TypeError(f"x has dtype {x.dtype} but the layer's parameters have "
                            f"{self.weight.dtype}; convert x (x.to({self.weight.dtype})) or "
                            f"the layer (layer.to({x.dtype}))")
        xc = x if self.channels_last else x.movedim(1, -1)
        h, c = mdlstm(xc, self.weight, self.bias, variant=self.variant,
                      directions=self.directions, sizes=sizes)
        if not self.channels_last:
            h, c = h.movedim(-1, 1), c.movedim(-1, 1)
        return (h, c) if return_cell else h


class MDLSTM2d(MDLSTMNd):
    """2-D multi-dimensional LSTM layer: (B, C, H, W) -> (B, Z*N, H, W), or
    (B, H, W, C) -> (B, H, W, Z*N) with channels_last=True.

    ``MDLSTM2d(input_size, hidden_size, directions=("tl",), variant="slstm",
    channels_last=False, dtype=torch.float32, seed=None)``; directions are
    names "tl", "tr", "bl", "br" or sign tuples. See `MDLSTMNd`.
    """

    ndim = 2

    def __init__(self, input_size: int, hidden_size: int, directions=("tl",),
                 variant: str = "slstm", channels_last: bool = False,
                 dtype: torch.dtype = torch.float32, seed=None):
        super().__init__(input_size, hidden_size, directions, variant, channels_last,
                         dtype, seed)


class MDLSTM3d(MDLSTMNd):
    """3-D multi-dimensional LSTM layer: (B, C, D, H, W) -> (B, Z*N, D, H, W), or
    (B, D, H, W, C) -> (B, D, H, W, Z*N) with channels_last=True.

    Directions are sign tuples of 3 entries (default ((1, 1, 1),)). See `MDLSTMNd`.
    """

    ndim = 3
