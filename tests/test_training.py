"""Layers in a training loop: forward(train=True) / backward, and the digits
example (issue 11, target 5) in a short version."""

import importlib.util
import pathlib

import numpy as np
import pytest

import fastmdlstm

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "train_digits.py"


@pytest.mark.parametrize("cls, spatial, directions", [
    (fastmdlstm.MDLSTM2D, (5, 6), ("tl", "br")),
    (fastmdlstm.MDLSTM3D, (3, 4, 2), ((1, 1, 1), (-1, 1, -1))),
])
def test_layer_backward_is_fastmdlstm_backward(cls, spatial, directions):
    layer = cls(3, 4, directions=directions, variant="graves", dtype=np.float64, seed=1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2,) + spatial + (3,))
    sizes = np.array([spatial, [max(1, s - 1) for s in spatial]])
    h = layer.forward(x, sizes, train=True)
    np.testing.assert_array_equal(h, layer(x, sizes=sizes))
    grad_h = rng.standard_normal(h.shape)
    grad_x = layer.backward(grad_h)
    h2, c2 = fastmdlstm.forward(x, layer.weights, layer.bias, variant="graves",
                                directions=directions, sizes=sizes, return_cell=True)
    want = fastmdlstm.backward(x, layer.weights, layer.bias, grad_h, h=h2, c=c2,
                               variant="graves", directions=directions, sizes=sizes)
    for got, expected in zip((grad_x, *layer.gradients()), want):
        np.testing.assert_array_equal(got, expected)
    assert layer.grad_weights.shape == layer.weights.shape
    assert layer.parameters()[0] is layer.weights


def test_layer_backward_keeps_its_own_sizes():
    """A caller refilling its sizes array between forward and backward (a reused
    buffer) changes nothing: the tape holds a copy."""
    layer = fastmdlstm.MDLSTM2D(2, 3, dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((2, 4, 5, 2))
    sizes = np.array([[4, 5], [2, 3]])
    h = layer.forward(x, sizes, train=True)
    grad_h = np.ones_like(h)
    want = fastmdlstm.backward(x, layer.weights, layer.bias, grad_h, h=h,
                               c=fastmdlstm.forward(x, layer.weights, layer.bias, sizes=sizes,
                                                    return_cell=True)[1], sizes=sizes)
    sizes[:] = 1  # the next batch's sizes, written into the same buffer
    for got, expected in zip((layer.backward(grad_h), *layer.gradients()), want):
        np.testing.assert_array_equal(got, expected)


def test_layer_backward_needs_a_training_forward():
    layer = fastmdlstm.MDLSTM2D(2, 3, seed=0)
    x = np.zeros((1, 3, 3, 2), np.float32)
    with pytest.raises(RuntimeError, match="train=True"):
        layer.backward(np.zeros((1, 3, 3, 3), np.float32))
    layer(x)  # an inference call keeps no tape
    with pytest.raises(RuntimeError):
        layer.backward(np.zeros((1, 3, 3, 3), np.float32))


def test_layer_backward_refuses_changed_parameters():
    layer = fastmdlstm.MDLSTM2D(2, 3, dtype=np.float64, seed=0)
    x = np.random.default_rng(0).standard_normal((1, 4, 4, 2))
    h = layer.forward(x, train=True)
    layer.weights += 0.5  # an optimiser step between forward and backward
    with pytest.raises(ValueError, match="h"):
        layer.backward(np.ones_like(h))


def test_plain_gradient_descent_lowers_the_loss():
    layer = fastmdlstm.MDLSTM2D(1, 4, directions=("tl", "br"), dtype=np.float64, seed=0)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 5, 5, 1))
    teacher = fastmdlstm.MDLSTM2D(1, 4, directions=("tl", "br"), dtype=np.float64, seed=7)
    target = teacher(x)  # reachable: fit another layer's output
    losses = []
    for _ in range(40):
        h = layer.forward(x, train=True)
        losses.append(0.5 * ((h - target) ** 2).sum())
        layer.backward(h - target)
        for p, g in zip(layer.parameters(), layer.gradients()):
            p -= 0.02 * g
    assert losses[10] < 0.5 * losses[0] and losses[-1] < 0.1 * losses[0]


def test_digits_example_short():
    pytest.importorskip("sklearn")
    spec = importlib.util.spec_from_file_location("train_digits", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    accuracy, _ = example.train(epochs=2, hidden=8, limit=400, verbose=False)
    assert accuracy >= 0.6  # the full run (12 epochs, all images) reaches >= 0.95
