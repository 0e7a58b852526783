"""Malformed calls raise ValueError/TypeError naming the argument, and leave
every caller buffer untouched."""

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
