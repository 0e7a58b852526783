"""init_params, the layer classes, save/load and the dispatcher's public face."""

import numpy as np
import pytest

import fastmdlstm
from fastmdlstm import _dispatch


def test_init_params_layout_and_reproducibility():
    w, b = fastmdlstm.init_params(3, 4, directions=2, seed=5)
    assert w.shape == (2, 3 + 2 * 4, 5 * 4) and b.shape == (2, 20)
    assert w.dtype == b.dtype == np.float32
    assert np.abs(w).max() <= 1 / np.sqrt(4)
    assert (b[:, :12] == 0).all() and (b[:, 12:] == 0).all()  # 2-D: sigma(0) = 1/2 each
    w2, b2 = fastmdlstm.init_params(3, 4, directions=["tl", "br"], seed=5)
    np.testing.assert_array_equal(w, w2)
    np.testing.assert_array_equal(b, b2)
    w3, b3 = fastmdlstm.init_params(3, 4, ndim=3, dtype=np.float64, seed=5)
    assert w3.shape == (1, 3 + 3 * 4, 6 * 4) and w3.dtype == np.float64
    np.testing.assert_allclose(3 / (1 + np.exp(-b3[0, 12:])), 1.0)  # forget gates sum to 1
    _, b1 = fastmdlstm.init_params(3, 4, ndim=1)
    assert (b1[0, 12:] == 1).all()  # the usual LSTM forget bias


@pytest.mark.parametrize("cls, shape, directions", [
    (fastmdlstm.MDLSTM2D, (2, 5, 4, 3), ("tl", "br")),
    (fastmdlstm.MDLSTM2D, (2, 5, 4, 3), ((1, -1),)),
    (fastmdlstm.MDLSTM3D, (2, 3, 4, 2, 3), ((1, 1, 1), (-1, 1, -1))),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layer_call_save_load(tmp_path, cls, shape, directions, dtype):
    layer = cls(3, 4, directions=directions, variant="graves", dtype=dtype, seed=2)
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    h = layer(x)
    assert h.shape == shape[:-1] + (4 * len(directions),) and h.dtype == dtype
    np.testing.assert_array_equal(
        h, fastmdlstm.forward(x, layer.weights, layer.bias, variant="graves",
                              directions=directions))
    path = tmp_path / "layer.npz"
    layer.save(path)
    loaded = cls.load(path)
    assert (loaded.directions, loaded.variant, loaded.dtype) == (directions, "graves", dtype)
    np.testing.assert_array_equal(loaded(x), h)
    generic = fastmdlstm.MDLSTM.load(path)
    assert generic.spatial_ndim == len(shape) - 2
    other = fastmdlstm.MDLSTM3D if cls is fastmdlstm.MDLSTM2D else fastmdlstm.MDLSTM2D
    with pytest.raises(ValueError, match="D layer"):
        other.load(path)


def test_load_rejects_foreign_files(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, a=np.zeros(3))
    with pytest.raises(ValueError, match="not a fastmdlstm model"):
        fastmdlstm.MDLSTM2D.load(path)


def test_layer_sizes_and_backends_agree():
    layer = fastmdlstm.MDLSTM2D(2, 3, directions=("tl", "tr", "bl", "br"), dtype=np.float64,
                                seed=3)
    x = np.random.default_rng(1).standard_normal((3, 4, 6, 2))
    sizes = np.array([[4, 6], [2, 3], [1, 6]])
    np.testing.assert_allclose(layer(x, sizes=sizes, backend="python"),
                               layer(x, sizes=sizes, backend="auto"), atol=1e-10)


def test_choose_backend_explains_itself():
    x = np.zeros((1, 8, 8, 1), np.float32)
    w, _ = fastmdlstm.init_params(1, 8)
    choice = fastmdlstm.choose_backend(x, w)
    assert isinstance(choice, fastmdlstm.Choice)
    assert choice.backend == ("numba" if fastmdlstm.HAVE_NUMBA else "python")
    assert choice.reason
    assert fastmdlstm.choose_backend(x.shape, w.shape, backend="python").backend == "python"


def test_dispatch_rules():
    def driver(batch, spatial, c, n, z=1, threads=2):
        return _dispatch.choose(batch, spatial, c, n, z, threads, True).driver
    assert driver(1, (8, 8), 1, 8) == "serial"                 # tiny: no parallel region
    assert driver(2, (2, 2), 1, 4) == "serial"
    assert driver(2, (4, 4), 1, 8) == "batch"
    assert driver(64, (28, 28), 1, 32) == "batch"              # a pair per thread
    assert driver(2, (64, 64), 16, 64) == "batch"
    assert driver(1, (256, 256), 16, 32) == "wavefront"        # B = 1, large
    assert driver(1, (32, 32), 4, 16) == "serial"              # B = 1, small
    assert driver(1, (40, 40), 16, 32) == "serial"             # 2 blocks: 1 tile a diagonal
    assert driver(1, (64, 64), 16, 32) == "wavefront"          # 4 blocks
    assert driver(1, (8, 16, 16), 8, 16) == "wavefront"        # 3-D: planes
    assert driver(1, (1_000_000,), 16, 32) == "serial"         # 1-D: nothing to share
    assert driver(4, (16, 16), 4, 16, threads=16) == "batch"   # 4 pairs on 16 threads
    assert driver(64, (28, 28), 1, 32, threads=1) == "serial"
    assert _dispatch.choose(64, (28, 28), 1, 32, 1, 2, False).backend == "python"


def test_dispatch_reason_states_the_condition_that_applied():
    def reason(batch, spatial, c, n, z=1, threads=2):
        return _dispatch.choose(batch, spatial, c, n, z, threads, True).reason
    tiny = reason(1, (8, 8), 1, 8)  # 43520 multiply-adds: above the parallel threshold
    assert "43520 multiply-adds < 10000000" in tiny and "< 10000:" not in tiny
    assert " or " not in tiny
    assert reason(2, (2, 2), 1, 4).startswith("1440 multiply-adds < 10000:")
    assert reason(64, (28, 28), 1, 32, threads=1) == "one numba thread: nothing runs in parallel"
    assert reason(2, (4, 4), 1, 8).startswith("2 (sample, direction) pairs >= 2 threads")
    assert "1-D scan" in reason(1, (1_000_000,), 16, 32)
    assert "2 blocks of steps per strip" in reason(1, (40, 40), 16, 32)
    assert "anti-diagonal plane" in reason(1, (8, 16, 16), 8, 16)
    assert "tile diagonal" in reason(1, (256, 256), 16, 32)
    assert reason(4, (16, 16), 4, 16, threads=16).startswith("4 (sample, direction) pairs < 16")
    # every reason agrees with the driver the hot path picks
    for batch in (1, 2, 3):
        for spatial in ((8,), (300,), (8, 8), (40, 40), (64, 64), (4, 8, 8), (8, 16, 16)):
            for n in (4, 32):
                for threads in (1, 2, 4):
                    args = (batch, spatial, 8, n, 1, threads, True)
                    choice = _dispatch.choose(*args)
                    assert choice[:2] == _dispatch.pick(*args) and choice.reason
