"""The seed text's worked example: a 2x2 single-channel image, forward feed at
time stamps (1,1), (2,1), (1,2), (2,2), written out by hand (N = 1, so every
quantity is a scalar), boundary states C(0,j), C(i,0), h likewise all zero."""

import math

import numpy as np
import pytest

import fastmdlstm


def sig(v):
    return 1.0 / (1.0 + math.exp(-v))


# Gate blocks g, o, i, f_row, f_col; rows x, h_(i-1,j), h_(i,j-1).
W = np.array([[0.5, -0.3, 0.8, 0.2, -0.1],     # from x
              [0.4, 0.6, -0.2, 0.7, 0.3],      # from h of the previous row
              [-0.6, 0.1, 0.5, -0.4, 0.9]])    # from h of the previous column
B = np.array([0.1, 0.2, -0.1, 1.0, 0.5])
X = np.array([[1.0, -2.0], [0.5, 3.0]])        # X[row, col], 1-based (1,1) = X[0,0]


def step(x, h_up, c_up, h_left, c_left, variant):
    g = math.tanh(x * W[0, 0] + h_up * W[1, 0] + h_left * W[2, 0] + B[0])
    o = sig(x * W[0, 1] + h_up * W[1, 1] + h_left * W[2, 1] + B[1])
    i = sig(x * W[0, 2] + h_up * W[1, 2] + h_left * W[2, 2] + B[2])
    f_row = sig(x * W[0, 3] + h_up * W[1, 3] + h_left * W[2, 3] + B[3])
    f_col = sig(x * W[0, 4] + h_up * W[1, 4] + h_left * W[2, 4] + B[4])
    c = g * i + f_row * c_up + f_col * c_left
    h = math.tanh(c * o) if variant == "slstm" else o * math.tanh(c)
    return h, c


def by_hand(variant):
    # time stamp (1,1): both predecessors are boundary states (zero)
    h11, c11 = step(X[0, 0], 0.0, 0.0, 0.0, 0.0, variant)
    # (2,1): row 2, column 1 -- previous row is (1,1), previous column boundary
    h21, c21 = step(X[1, 0], h11, c11, 0.0, 0.0, variant)
    # (1,2): row 1, column 2 -- previous row boundary, previous column (1,1)
    h12, c12 = step(X[0, 1], 0.0, 0.0, h11, c11, variant)
    # (2,2): previous row (1,2), previous column (2,1)
    h22, c22 = step(X[1, 1], h12, c12, h21, c21, variant)
    return np.array([[h11, h12], [h21, h22]]), np.array([[c11, c12], [c21, c22]])


def test_hand_values_are_what_the_equations_give():
    # A spot check of the hand code itself with numbers worked on paper:
    # (1,1): pre = x*W[0] + B = [0.6, -0.1, 0.7, 1.2, 0.4]
    h, c = by_hand("slstm")
    g, o, i = math.tanh(0.6), sig(-0.1), sig(0.7)
    assert c[0, 0] == pytest.approx(g * i, abs=1e-15)
    assert h[0, 0] == pytest.approx(math.tanh(g * i * o), abs=1e-15)


@pytest.mark.parametrize("variant", ["slstm", "graves"])
@pytest.mark.parametrize("backend", ["python", "numba"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_seed_2x2_example(variant, backend, dtype):
    if backend == "numba" and not fastmdlstm.HAVE_NUMBA:
        pytest.skip("numba not importable")
    h_ref, c_ref = by_hand(variant)
    x = X.reshape(1, 2, 2, 1).astype(dtype)
    h, c = fastmdlstm.forward(x, W.astype(dtype), B.astype(dtype), variant=variant,
                              backend=backend, return_cell=True)
    tol = 1e-12 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(h[0, :, :, 0], h_ref, atol=tol, rtol=0)
    np.testing.assert_allclose(c[0, :, :, 0], c_ref, atol=tol, rtol=0)
