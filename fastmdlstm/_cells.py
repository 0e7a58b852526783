"""The cell variants and the gate layout: one table for the API, the kernels
and the reference (no numba here: the fallback imports it too).

Gate blocks, each N wide, in the columns of W and the entries of b:
g (tanh candidate), o (output), i (input), then one forget gate per spatial
axis, f_0 .. f_(d-1). The variants differ only in h:
  "slstm"  (Theis & Bethge 2015): h = tanh(c * o)
  "graves" (Graves & Schmidhuber): h = o * tanh(c)
"""

VARIANTS = ("slstm", "graves")
VARIANT_CODES = {name: code for code, name in enumerate(VARIANTS)}  # the kernels' codes
SLSTM, GRAVES = VARIANT_CODES["slstm"], VARIANT_CODES["graves"]


def gate_blocks(d):
    """Names of the (3 + d) gate blocks of a d-D cell, in column order."""
    return ("g", "o", "i") + tuple(f"f{k}" for k in range(d))
