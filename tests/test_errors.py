"""Malformed calls raise ValueError/TypeError naming the argument, and leave
every caller buffer untouched."""

import warnings

import numpy as np
import pytest

import fastmdlstm

F32, F64 = np.float32, np.float64


def good(dtype=F64, z=1):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 2)).astype(dtype)
    w, b = fastmdlstm.init_params(2, 3, directions=z, dtype=dtype, seed=1)
    return x, w, b


def _forward_cases():
    x, w, b = good()
    x4, w4, b4 = good(z=4)
    cases = {
        "x list": (TypeError, "x", dict(x=x.tolist())),
        "x int": (TypeError, "x", dict(x=x.astype(np.int32))),
        "x float16": (TypeError, "x", dict(x=x.astype(np.float16))),
        "x complex": (TypeError, "x", dict(x=x.astype(np.complex128))),
        "x object": (TypeError, "x", dict(x=x.astype(object))),
        "x ndim 2": (ValueError, "x", dict(x=x[0, 0])),
        "x ndim 6": (ValueError, "x", dict(x=x[..., None, None])),
        "channel mismatch": (ValueError, "weights", dict(x=x[..., :1])),
        "weights ndim 1": (ValueError, "weights", dict(weights=w[0, 0])),
        "weights int": (TypeError, "weights", dict(weights=w.astype(int))),
        "weights columns": (ValueError, "weights", dict(weights=w[..., :-1])),
        "weights for 3-D": (ValueError, "weights", dict(weights=np.zeros((1, 11, 18)))),
        "bias shape": (ValueError, "bias", dict(bias=b[:, :-1])),
        "bias Z": (ValueError, "bias", dict(weights=w4, bias=b)),
        "bias list": (TypeError, "bias", dict(bias=b.tolist())),
        "variant": (ValueError, "variant", dict(variant="lstm")),
        "variant type": (ValueError, "variant", dict(variant=None)),
        "backend": (ValueError, "backend", dict(backend="cuda")),
        "direction name": (ValueError, "directions", dict(directions=["up"])),
        "direction zero": (ValueError, "directions", dict(directions=[(1, 0)])),
        "direction length": (ValueError, "directions", dict(directions=[(1, 1, 1)])),
        "direction bool": (ValueError, "directions", dict(directions=[(True, True)])),
        "direction type": (TypeError, "directions", dict(directions=5)),
        "directions count": (ValueError, "directions", dict(directions=["tl", "br"])),
        "directions vs Z": (ValueError, "directions", dict(weights=w4, bias=b4)),
        "sizes shape": (ValueError, "sizes", dict(sizes=np.ones((2, 3), int))),
        "sizes float": (TypeError, "sizes", dict(sizes=np.ones((2, 2)))),
        "sizes bool": (TypeError, "sizes", dict(sizes=np.ones((2, 2), bool))),
        "sizes zero": (ValueError, "sizes", dict(sizes=np.array([[3, 4], [0, 4]]))),
        "sizes negative": (ValueError, "sizes", dict(sizes=np.array([[3, 4], [-1, 4]]))),
        "sizes too large": (ValueError, "sizes", dict(sizes=np.array([[3, 5], [3, 4]]))),
        "out shape": (ValueError, "out", dict(out=np.zeros((2, 3, 4, 4)))),
        "out dtype": (TypeError, "out", dict(out=np.zeros((2, 3, 4, 3), F32))),
        "out list": (TypeError, "out", dict(out=[0.0])),
        "return_cell": (TypeError, "return_cell", dict(return_cell="yes")),
    }
    read_only = np.zeros((2, 3, 4, 3))
    read_only.flags.writeable = False
    cases["out read-only"] = (ValueError, "out", dict(out=read_only))
    return cases


FORWARD_CASES = _forward_cases()


@pytest.mark.parametrize("name", list(FORWARD_CASES))
def test_forward_rejects(name):
    error, argument, changes = FORWARD_CASES[name]
    x, w, b = good()
    kwargs = dict(x=x, weights=w, bias=b)
    kwargs.update(changes)
    arrays = {k: v for k, v in kwargs.items() if isinstance(v, np.ndarray)}
    snapshot = {k: v.copy() for k, v in arrays.items()}
    with pytest.raises(error, match=argument):
        fastmdlstm.forward(kwargs.pop("x"), kwargs.pop("weights"), kwargs.pop("bias"),
                           **kwargs)
    for k, v in arrays.items():
        np.testing.assert_array_equal(v, snapshot[k], err_msg=f"{k} changed")


def test_out_aliasing_x_is_refused():
    x = np.zeros((2, 3, 4, 3))
    w, b = fastmdlstm.init_params(3, 3, dtype=F64)
    with pytest.raises(ValueError, match="out"):
        fastmdlstm.forward(x, w, b, out=x)
    assert not x.any()


def _inplace_cases():
    x, w, b = good()
    h = np.zeros((2, 4, 5, 3))
    ro = h.copy()
    ro.flags.writeable = False
    return {
        "h shape": (ValueError, "h", dict(h=h[:, :-1])),
        "c shape": (ValueError, "c", dict(c=h[..., :-1].copy())),
        "h dtype": (TypeError, "h", dict(h=h.astype(F32))),
        "c int": (TypeError, "c", dict(c=h.astype(int))),
        "h read-only": (ValueError, "h", dict(h=ro)),
        "c list": (TypeError, "c", dict(c=h.tolist())),
        "h is c": (ValueError, "c", dict()),  # h set to c below
        "two directions": (ValueError, "weights", dict(weights=np.concatenate([w, w]))),
        "variant": (ValueError, "variant", dict(variant="x")),
        "backend": (ValueError, "backend", dict(backend="gpu")),
        "x int": (TypeError, "x", dict(x=x.astype(int))),
    }


INPLACE_CASES = _inplace_cases()


@pytest.mark.parametrize("name", list(INPLACE_CASES))
def test_forward_inplace_rejects(name):
    error, argument, changes = INPLACE_CASES[name]
    x, w, b = good()
    h = np.full((2, 4, 5, 3), 0.25)
    c = np.full((2, 4, 5, 3), -0.5)
    kwargs = dict(x=x, weights=w, bias=b, h=h, c=c)
    kwargs.update(changes)
    if name == "h is c":
        kwargs["h"] = c
    with pytest.raises(error, match=argument):
        fastmdlstm.forward_inplace(kwargs.pop("x"), kwargs.pop("weights"),
                                   kwargs.pop("bias"), kwargs.pop("h"), kwargs.pop("c"),
                                   **kwargs)
    assert (h == 0.25).all() and (c == -0.5).all()


@pytest.mark.parametrize("call, error, argument", [
    (lambda: fastmdlstm.init_params(0, 3), ValueError, "input_size"),
    (lambda: fastmdlstm.init_params(2, 2.5), TypeError, "hidden_size"),
    (lambda: fastmdlstm.init_params(2, 3, dtype=np.int64), TypeError, "dtype"),
    (lambda: fastmdlstm.init_params(2, 3, ndim=4), ValueError, "ndim"),
    (lambda: fastmdlstm.init_params(2, 3, directions=0), ValueError, "directions"),
    (lambda: fastmdlstm.MDLSTM2D(2, 3, variant="x"), ValueError, "variant"),
    (lambda: fastmdlstm.MDLSTM2D(2, 3, directions=["tl", "up"]), ValueError, "directions"),
    (lambda: fastmdlstm.MDLSTM2D(2, 3)(np.zeros((1, 2, 2, 2, 2))), ValueError, "x"),
    (lambda: fastmdlstm.MDLSTM3D(2, 3, directions=[(1, 1)]), ValueError, "directions"),
    (lambda: fastmdlstm.MDLSTM(2, 3), ValueError, "ndim"),
    (lambda: fastmdlstm.choose_backend(np.zeros((2, 3)), np.zeros((3, 5))), ValueError, "x"),
])
def test_other_entry_points_reject(call, error, argument):
    with pytest.raises(error, match=argument):
        call()


def test_direction_validation_does_not_depend_on_earlier_calls():
    x, w, b = good()
    fastmdlstm.forward(x, w, b, directions=[(1, 1)])  # fills the parse cache
    for bad in ([(True, True)], [(1.0, 1.0)], [(1, 1.0)]):
        with pytest.raises(ValueError, match="directions"):
            fastmdlstm.forward(x, w, b, directions=bad)


def test_buffers_must_not_overlap_parameters_but_interleaved_views_are_fine():
    x, w, b = good()
    w = np.ascontiguousarray(w)
    w_before = w.copy()
    with pytest.raises(ValueError, match="out must not share memory with weights"):
        fastmdlstm.forward(x, w, b, out=w.reshape(-1)[:2 * 3 * 4 * 3].reshape(2, 3, 4, 3))
    np.testing.assert_array_equal(w, w_before)
    buf = np.zeros((2, 4, 5, 6))
    fastmdlstm.forward_inplace(x, w, b, buf[..., ::2], buf[..., 1::2])  # interleaved: fine
    assert buf[:, 1:, 1:].any()


# --- numpy subclasses, byte order, buffers that overlap themselves (issue 10) ----------


def _masked(a):
    return np.ma.masked_array(a, mask=np.zeros(a.shape, bool))


def _self_overlapping(shape, strides_bytes):
    """A writeable view of a fresh buffer with the given strides (in bytes)."""
    base = np.zeros(4096)
    return np.lib.stride_tricks.as_strided(base, shape, strides_bytes, writeable=True)


def _subclass_and_overlap_cases():
    x, w, b = good()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PendingDeprecationWarning)  # numpy.matrix
        w_matrix, b_matrix = np.asmatrix(w[0]), np.asmatrix(b)
    return {
        "x masked": (TypeError, "x must be a plain numpy.ndarray", dict(x=_masked(x))),
        "weights masked": (TypeError, "weights must be a plain", dict(weights=_masked(w))),
        "weights matrix": (TypeError, "weights must be a plain",
                           dict(weights=w_matrix)),
        "bias matrix": (TypeError, "bias must be a plain", dict(bias=b_matrix)),
        "sizes masked": (TypeError, "sizes must be a plain",
                         dict(sizes=_masked(np.array([[3, 4], [2, 2]])))),
        "out masked": (TypeError, "out must be a plain",
                       dict(out=_masked(np.zeros((2, 3, 4, 3))))),
        "x big-endian": (TypeError, "x has non-native byte order", dict(x=x.astype(">f8"))),
        "out big-endian": (TypeError, "out", dict(out=np.zeros((2, 3, 4, 3), ">f8"))),
        "out stride 0": (ValueError, "out overlaps itself",
                         dict(out=_self_overlapping((2, 3, 4, 3), (0, 96, 24, 8)))),
        "out stride 0 last": (ValueError, "out overlaps itself",
                              dict(out=_self_overlapping((2, 3, 4, 3), (288, 96, 24, 0)))),
        "out strides interleave": (ValueError, "out overlaps itself",
                                   dict(out=_self_overlapping((2, 3, 4, 3), (96, 32, 8, 8)))),
    }


SUBCLASS_CASES = _subclass_and_overlap_cases()


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
@pytest.mark.parametrize("backend", ["python", "numba"])
@pytest.mark.parametrize("name", list(SUBCLASS_CASES))
def test_forward_refuses_subclasses_and_self_overlap_before_writing(name, backend):
    if backend == "numba" and not fastmdlstm.HAVE_NUMBA:
        pytest.skip("numba cannot be imported")
    error, match, changes = SUBCLASS_CASES[name]
    x, w, b = good()
    kwargs = dict(x=x, weights=w, bias=b, out=np.full((2, 3, 4, 3), 7.0), backend=backend)
    kwargs.update(changes)
    out = kwargs["out"]
    before = np.array(out, copy=True)
    with pytest.raises(error, match=match):
        fastmdlstm.forward(kwargs.pop("x"), kwargs.pop("weights"), kwargs.pop("bias"),
                           **kwargs)
    np.testing.assert_array_equal(np.asarray(out), before)  # nothing written


@pytest.mark.parametrize("backend", ["python", "numba"])
@pytest.mark.parametrize("which, view, match", [
    ("h", lambda: _self_overlapping((2, 4, 5, 3), (0, 120, 24, 8)), "h overlaps itself"),
    ("c", lambda: _self_overlapping((2, 4, 5, 3), (480, 120, 24, 0)), "c overlaps itself"),
    ("c", lambda: _self_overlapping((2, 4, 5, 3), (480, 120, 16, 8)), "c overlaps itself"),
    ("h", lambda: _masked(np.zeros((2, 4, 5, 3))), "h must be a plain"),
])
def test_forward_inplace_refuses_self_overlapping_states(which, view, match, backend):
    if backend == "numba" and not fastmdlstm.HAVE_NUMBA:
        pytest.skip("numba cannot be imported")
    x, w, b = good()
    states = {"h": np.full((2, 4, 5, 3), 0.25), "c": np.full((2, 4, 5, 3), -0.5)}
    states[which] = view()
    states[which][...] = 3.0
    error = TypeError if "plain" in match else ValueError
    with pytest.raises(error, match=match):
        fastmdlstm.forward_inplace(x, w, b, states["h"], states["c"], backend=backend)
    assert (np.asarray(states[which]) == 3.0).all()


def test_self_overlap_test_is_exact_where_the_quick_test_cannot_decide():
    from fastmdlstm._api import _self_overlaps
    buf = np.zeros((2, 4, 5, 6))
    assert not _self_overlaps(buf[..., ::2]) and not _self_overlaps(buf[:, ::-1, :, 1::2])
    assert not _self_overlaps(np.zeros((3, 4)).T)
    assert _self_overlaps(np.broadcast_to(np.zeros(3), (2, 3)))
    # 3 x 2 elements at byte offsets {0, 16, 32} + {0, 24}: all distinct, not nested
    assert not _self_overlaps(_self_overlapping((3, 2), (16, 24)))
    # {0, 16, 32} + {0, 32, 64}: 32 twice
    assert _self_overlaps(_self_overlapping((3, 3), (16, 32)))
    assert not _self_overlaps(_self_overlapping((1, 5), (0, 8)))  # extent 1: stride unused


def test_memmap_and_byte_swapped_parameters_are_accepted(tmp_path):
    x, w, b = good()
    expected = fastmdlstm.forward(x, w, b)
    mapped = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=x.dtype,
                                       shape=x.shape)
    mapped[...] = x
    out = np.lib.format.open_memmap(tmp_path / "h.npy", mode="w+", dtype=x.dtype,
                                    shape=expected.shape)
    assert fastmdlstm.forward(mapped, w, b, out=out) is out
    np.testing.assert_array_equal(out, expected)
    # weights/bias of either float dtype and byte order are cast to x's dtype
    swapped = fastmdlstm.forward(x, w.astype(">f8"), b.astype(">f4"))
    np.testing.assert_allclose(swapped, fastmdlstm.forward(x, w, b.astype(np.float32)),
                               rtol=0, atol=0)


@pytest.mark.parametrize("x, weights, match", [
    ((2, -3, 4, 2), (1, 8, 15), "x: a shape must hold integers >= 0"),
    ((-1, 3, 4, 2), (8, 15), "x: a shape"),
    ((2, 3.5, 4, 2), (8, 15), "x: a shape"),
    ((2, True, 4, 2), (8, 15), "x: a shape"),
    ("abcd", (8, 15), "x: a shape"),
    ((2, 3), (8, 15), "x: shape"),
    ((2, 3, 4, 2), (1, -8, 15), "weights: a shape"),
    ((2, 3, 4, 2), (1, 1, 8, 15), "weights: shape .* must have 2 or 3 entries"),
    ((2, 3, 4, 2), (15,), "weights: shape"),
    ((2, 3, 4, 2), (1, 8, 14), "weights: shape .* does not fit a 2-D cell"),
    ((2, 3, 4, 2), (0, 8, 15), "weights: shape .* does not fit"),
    ((2, 3, 4, 2), (1, 8, 0), "weights: shape .* does not fit"),
    ((2, 3, 4, 2), (1, 9, 15), "weights: shape .* has 9 rows"),
])
def test_choose_backend_refuses_invalid_shapes(x, weights, match):
    with pytest.raises(ValueError, match=match):
        fastmdlstm.choose_backend(x, weights)


def test_choose_backend_checks_directions_against_weights():
    with pytest.raises(ValueError, match="directions"):
        fastmdlstm.choose_backend((2, 3, 4, 2), (1, 8, 15), directions=["tl", "br"])
    with pytest.raises(TypeError, match="x must be an array or a shape"):
        fastmdlstm.choose_backend(5, (8, 15))
    assert fastmdlstm.choose_backend((0, 3, 4, 2), (2, 8, 15),
                                     directions=["tl", "br"]).backend


# --- the kernel-level entry point's shape contract (issue 10, item 13) --------------


def test_kernel_entry_point_accepts_init_params_shapes_and_says_what_is_wrong():
    numba = pytest.importorskip("numba")
    from fastmdlstm.kernels import forward_inplace_2d
    x, w, b = good()                          # w (1, 8, 15), b (1, 15): init_params' shapes
    h, c = np.zeros((2, 4, 5, 3)), np.zeros((2, 4, 5, 3))
    forward_inplace_2d(x, w, b, h, c, 0)      # as init_params returns them
    h2, c2 = np.zeros_like(h), np.zeros_like(c)
    forward_inplace_2d(x, w[0], b[0], h2, c2, 0)  # one direction's (C + 2N, 5N), (5N,)
    h3, c3 = np.zeros_like(h), np.zeros_like(c)
    fastmdlstm.forward_inplace(x, w, b, h3, c3, backend="numba")
    np.testing.assert_array_equal(h, h3)
    np.testing.assert_array_equal(h2, h3)
    np.testing.assert_array_equal(c, c3)
    runtime = [
        ((x, np.concatenate([w, w]), np.concatenate([b, b]), h, c, 0), "must hold one"),
        ((x, np.ascontiguousarray(w[:, :-1]), b, h, c, 0), "C \\+ 2N rows"),
        ((x[..., :1], w, b, h, c, 0), "C \\+ 2N rows"),
        ((x, w, np.ascontiguousarray(b[:, :-5]), h, c, 0), "bias must have 5N"),
        ((x, w, b, np.zeros((2, 3, 5, 3)), c, 0), "h and c must have shape"),
        ((x, w, b, h, np.zeros((2, 4, 5, 3))[:1].copy(), 0), "h and c must have shape"),
        ((x, w, b, h, c, 7), "variant must be a code"),
    ]
    before = h.copy()
    for args, match in runtime:
        with pytest.raises(ValueError, match=match) as info:
            forward_inplace_2d(*args)
        assert str(info.value).startswith("forward_inplace_2d: ")
    np.testing.assert_array_equal(h, before)
    if numba.config.DISABLE_JIT:  # the coverage run: nothing compiles, no typing errors
        return
    with pytest.raises(numba.core.errors.TypingError,
                       match="bias must be \\(1, 5N\\) to go with 3-D weights"):
        forward_inplace_2d(x, w, b[0], h, c, 0)
    with pytest.raises(numba.core.errors.TypingError, match="weights must have x's dtype"):
        forward_inplace_2d(x, w.astype(np.float32), b, h, c, 0)
    with pytest.raises(numba.core.errors.TypingError, match="h must be a C-contiguous"):
        forward_inplace_2d(x, w, b, np.zeros((2, 4, 5, 6))[..., ::2], c, 0)


def test_init_params_fails_before_allocating_what_cannot_fit(monkeypatch):
    from fastmdlstm import _api
    monkeypatch.setattr(_api, "_available_memory", lambda: 2**20)
    monkeypatch.setattr(_api, "_free_memory", lambda: 0)  # the fast path: no verdict
    with pytest.raises(MemoryError, match="init_params"):
        fastmdlstm.init_params(64, 4096)          # 1.4e8 weights, > 1 MiB
    with pytest.raises(MemoryError, match="init_params"):
        fastmdlstm.MDLSTM2D(64, 4096)
    assert fastmdlstm.init_params(2, 3)[0].shape == (1, 8, 15)  # small: not even checked


def test_memory_check_reads_meminfo_only_near_the_limit(monkeypatch):
    from fastmdlstm import _api
    calls = []

    def available():
        calls.append(1)
        return 2**40

    monkeypatch.setattr(_api, "_available_memory", available)
    monkeypatch.setattr(_api, "_free_memory", lambda: 2**30)
    _api._check_memory(2**29, "half of what is free")  # the system call's answer suffices
    assert calls == []
    _api._check_memory(2**29 + 1, "more than half")
    assert calls == [1]
    monkeypatch.setattr(_api, "_available_memory", lambda: 2**29)
    with pytest.raises(MemoryError, match="more than is available"):
        _api._check_memory(2**29 + 1, "more than is available")
