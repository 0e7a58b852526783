"""The cell variants and their gate layouts: one table for the API, the
kernels and the reference (no numba here: the fallback imports it too).

Columns of W and entries of b come in blocks of N, one per gate, in the order
given by gate_blocks(variant, d); the rows of W are the C input channels,
then N rows per spatial axis for that axis' predecessor's h, in axis order.

  "slstm"  (Theis & Bethge 2015)      c = g*i + sum_k f_k*c_k        h = tanh(c*o)
  "graves" (Graves & Schmidhuber)     c = g*i + sum_k f_k*c_k        h = o*tanh(c)
  "halved" (rnn2d's default, RETURNN's old MDLSTM; any d)
                                      c = g*i + (1/d) sum_k f_k*c_k  h = o*tanh(c)
  "stable" (Leifert et al. 2016; 2-D only: one forget gate f and a gate lam
            that mixes the two predecessors)
                                      c = g*i + f*(lam*c_0 + (1-lam)*c_1)
                                      h = o*tanh(c)
g = tanh, every other gate the logistic sigmoid; c_k is the cell one step
back along axis k (c_0: the previous row, c_1: the previous column). In every
variant c saturates at the largest finite float instead of overflowing.
"""

VARIANTS = ("slstm", "graves", "halved", "stable")
VARIANT_CODES = {name: code for code, name in enumerate(VARIANTS)}  # the kernels' codes
SLSTM, GRAVES, HALVED, STABLE = (VARIANT_CODES[v] for v in VARIANTS)


def gate_blocks(variant, d):
    """Names of the gate blocks of a d-D cell, in column order ((3 + d) of them)."""
    if variant == "stable":
        return ("g", "o", "i", "f", "lam")
    return ("g", "o", "i") + tuple(f"f{k}" for k in range(d))


def check_variant(variant, d):
    """variant must be a known name, usable with d spatial axes (ValueError)."""
    if not isinstance(variant, str) or variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if variant == "stable" and d != 2:
        raise ValueError(f"variant 'stable' is defined for 2-D inputs only (its lam gate "
                         f"mixes two predecessors), got {d} spatial axes")
    return variant
