"""init_params, the layer classes, save/load and the dispatcher's public face."""

import json
import os
import re
import zipfile
from pathlib import Path

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


# --- load: metadata first, sizes from the archive headers, one constructor (issue 10) ---


# What save() writes for MDLSTM2D(3, 4, directions=("tl", "br")).
_META = {"format": 1, "class": "MDLSTM", "ndim": 2, "input_size": 3, "hidden_size": 4,
         "variant": "slstm", "directions": ["tl", "br"]}


def _model_file(path, meta_changes=(), weights=None, bias=None, meta_text=None,
                compressed=False):
    """A model file like save() writes, with parts of it replaced."""
    layer = fastmdlstm.MDLSTM2D(3, 4, directions=("tl", "br"), seed=0)
    meta = _META.copy()
    meta.update(dict(meta_changes))
    text = json.dumps(meta) if meta_text is None else meta_text
    save = np.savez_compressed if compressed else np.savez
    with open(path, "wb") as f:
        save(f, weights=layer.weights if weights is None else weights,
             bias=layer.bias if bias is None else bias, meta=np.array(text))
    return layer


BAD_META = {
    "variant": ({"variant": "lstm"}, "variant must be one of"),
    "variant type": ({"variant": 1}, "variant must be one of"),
    "direction name": ({"directions": ["tl", "up"]}, "unknown direction 'up'"),
    "direction signs": ({"directions": [[1, 0], [1, 1]]}, "directions"),
    "direction floats": ({"directions": [[1.0, 1.0], [1, 1]]}, "directions must be a list"),
    "direction bools": ({"directions": [[True, True], [1, 1]]}, "directions must be a list"),
    "directions not a list": ({"directions": "tl"}, "directions must be a list"),
    "directions empty": ({"directions": []}, "directions must be a list"),
    "hidden_size 0": ({"hidden_size": 0}, "hidden_size must be an integer from 1"),
    "hidden_size bool": ({"hidden_size": True}, "hidden_size must be an integer"),
    "hidden_size float": ({"hidden_size": 4.0}, "hidden_size must be an integer"),
    "hidden_size huge": ({"hidden_size": 10**30}, "hidden_size must be an integer"),
    "input_size negative": ({"input_size": -3}, "input_size must be an integer"),
    "ndim 5": ({"ndim": 5}, "ndim must be an integer from 1 to 3"),
    "ndim string": ({"ndim": "2"}, "ndim must be an integer"),
    "format": ({"format": 2}, "unsupported model format 2"),
    "format bool": ({"format": True}, "unsupported model format True"),
    "class": ({"class": "Other"}, "class 'Other'"),
    "missing key": ({"variant": None}, None),  # replaced below: key removed
}


@pytest.mark.parametrize("case", list(BAD_META))
def test_load_validates_metadata(tmp_path, case):
    changes, match = BAD_META[case]
    path = tmp_path / "m.npz"
    if case == "missing key":
        meta = _META.copy()
        del meta["variant"]
        _model_file(path, meta_text=json.dumps(meta))
        match = "metadata lacks 'variant'"
    else:
        _model_file(path, changes)
    with pytest.raises(ValueError, match=match) as info:
        fastmdlstm.MDLSTM.load(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("text, match", [
    ("[" * 5000 + "]" * 5000, "nested too deeply"),
    ("[" * 100_000 + "]" * 100_000, "metadata of 800128 bytes"),
    ('{"format": 1, "ndim": 2, "input_size": 3, "hidden_size": 1e999, "variant": "slstm", '
     '"directions": ["tl", "br"]}', "hidden_size must be an integer"),
    ('{"format": 1, "ndim": 2, "input_size": ' + "9" * 5000 + "}", "not valid JSON|integer"),
    ("not json", "not valid JSON"),
    ('["a list"]', "not a JSON object"),
])
def test_load_survives_hostile_json(tmp_path, text, match):
    path = tmp_path / "m.npz"
    _model_file(path, meta_text=text)
    with pytest.raises(ValueError, match=match):
        fastmdlstm.MDLSTM.load(path)


@pytest.mark.parametrize("which, array, match", [
    ("bias", np.zeros((2, 20), np.int64), "bias must be float32 or float64"),
    ("weights", np.zeros((2, 11, 20), np.float16), "weights must be float32 or float64"),
    ("weights", np.zeros((2, 11, 15), np.float32), r"weights has shape \(2, 11, 15\)"),
    ("bias", np.zeros((1, 20), np.float32), r"bias has shape \(1, 20\)"),
    ("weights", np.array(["x"]), "weights must be float32"),
])
def test_load_checks_arrays_against_metadata(tmp_path, which, array, match):
    path = tmp_path / "m.npz"
    _model_file(path, **{which: array})
    with pytest.raises(ValueError, match=match):
        fastmdlstm.MDLSTM2D.load(path)


def test_load_checks_member_sizes_before_inflating(tmp_path):
    """A small compressed member that declares a big array is refused from its header,
    before its data are read (the file is ~100 kB; its weights 128 MB)."""
    import tracemalloc
    path = tmp_path / "bomb.npz"
    _model_file(path, compressed=True)
    header = {"descr": "<f4", "fortran_order": False, "shape": (2, 11, 16_000_000 // 11)}
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        # a second weights member is what a reader finds under the name (the last one)
        with pytest.warns(UserWarning, match="Duplicate name"):
            with archive.open("weights.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_1_0(member, header)
                zeros = bytes(2**20)
                for _ in range(128):
                    member.write(zeros)
    assert path.stat().st_size < 2**20
    tracemalloc.start()
    try:
        with pytest.raises(ValueError, match="weights has shape"):
            fastmdlstm.MDLSTM2D.load(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20


def test_load_checks_the_uncompressed_size_against_the_header(tmp_path):
    path = tmp_path / "short.npz"
    layer = _model_file(path)
    header = {"descr": "<f4", "fortran_order": False, "shape": layer.weights.shape}
    with zipfile.ZipFile(path, "w") as archive:
        for key, value in (("meta", np.array(json.dumps(_META))), ("bias", layer.bias)):
            with archive.open(key + ".npy", "w") as member:
                np.lib.format.write_array(member, value)
        with archive.open("weights.npy", "w") as member:
            np.lib.format.write_array_header_1_0(member, header)
            member.write(layer.weights.tobytes()[:-4])  # one float short
    with pytest.raises(ValueError, match="weights holds .* bytes, but its header says"):
        fastmdlstm.MDLSTM2D.load(path)


def _corrupt(path):
    data = bytearray(path.read_bytes())
    start = data.index(b"weights.npy") + 40  # inside the compressed weights
    data[start:start + 200] = bytes(200)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, match", [
    (lambda p: p.write_bytes(b""), "empty file"),
    (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "BadZipFile"),
    (lambda p: p.write_bytes(b"plain text, not an archive\n"), "BadZipFile"),
    (_corrupt, "not a readable fastmdlstm model file"),
])
def test_load_turns_damaged_files_into_one_line_value_errors(tmp_path, damage, match):
    path = tmp_path / "m.npz"
    _model_file(path, compressed=True)
    damage(path)
    with pytest.raises(ValueError, match=match) as info:
        fastmdlstm.MDLSTM.load(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_load_of_a_missing_file_is_an_oserror(tmp_path):
    with pytest.raises(FileNotFoundError):
        fastmdlstm.MDLSTM.load(tmp_path / "missing.npz")
    with pytest.raises(IsADirectoryError):
        fastmdlstm.MDLSTM.load(tmp_path)


def test_load_converts_byte_swapped_parameters(tmp_path):
    path = tmp_path / "big.npz"
    layer = _model_file(path, weights=None)
    _model_file(path, weights=layer.weights.astype(">f4"), bias=layer.bias.astype(">f8"))
    loaded = fastmdlstm.MDLSTM2D.load(path)
    assert loaded.weights.dtype == np.float32 and loaded.weights.dtype.isnative
    assert loaded.bias.dtype == np.float32 and loaded.weights.flags.c_contiguous
    np.testing.assert_array_equal(loaded.weights, layer.weights)
    np.testing.assert_array_equal(loaded.bias, layer.bias)


def test_save_writes_exactly_the_given_path(tmp_path):
    layer = fastmdlstm.MDLSTM3D(2, 3, seed=1)
    path = tmp_path / "noext"
    layer.save(path)
    assert os.listdir(tmp_path) == ["noext"]
    loaded = fastmdlstm.MDLSTM3D.load(str(path))
    np.testing.assert_array_equal(loaded.weights, layer.weights)
    assert repr(loaded) == repr(layer)


def test_from_params_is_the_one_constructor():
    w, b = fastmdlstm.init_params(3, 4, directions=2, seed=0)
    layer = fastmdlstm.MDLSTM2D.from_params(w, b, directions=("tl", "br"), variant="graves")
    assert (layer.input_size, layer.hidden_size, layer.output_size) == (3, 4, 8)
    assert layer.weights is not w and np.shares_memory(layer.weights, w) is False
    np.testing.assert_array_equal(layer.weights, w)
    one = fastmdlstm.MDLSTM.from_params(w[0], b[0], directions=[(1, -1)])  # ndim from directions
    assert one.spatial_ndim == 2 and one.weights.shape == (1, 11, 20)
    f64 = fastmdlstm.MDLSTM3D.from_params(*fastmdlstm.init_params(2, 3, ndim=3), dtype="f8")
    assert f64.dtype == np.float64 and f64.directions == ((1, 1, 1),)
    with pytest.raises(TypeError, match="weights must have a float32 or float64"):
        fastmdlstm.MDLSTM2D.from_params(w.astype(int), b, directions=("tl", "br"))
    with pytest.raises(TypeError, match="bias must be a plain"):
        fastmdlstm.MDLSTM2D.from_params(w, np.ma.masked_array(b), directions=("tl", "br"))
    with pytest.raises(ValueError, match="Z=1 directions"):
        fastmdlstm.MDLSTM2D.from_params(w, b)
    with pytest.raises(ValueError, match="bias must have shape"):
        fastmdlstm.MDLSTM2D.from_params(w, b[:, :-1], directions=("tl", "br"))
    with pytest.raises(ValueError, match="do not fit a 3-D cell"):
        fastmdlstm.MDLSTM3D.from_params(w, b, directions=[(1, 1, 1), (-1, 1, 1)])
    with pytest.raises(ValueError, match="ndim must be 2 for MDLSTM2D"):
        fastmdlstm.MDLSTM2D.from_params(w, b, directions=("tl", "br"), ndim=3)
    with pytest.raises(ValueError, match="variant"):
        fastmdlstm.MDLSTM2D.from_params(w, b, directions=("tl", "br"), variant="x")


# --- the public API documents itself (issue 10, item 14) -----------------------------


@pytest.mark.parametrize("function", [
    fastmdlstm.forward, fastmdlstm.forward_inplace, fastmdlstm.init_params,
    fastmdlstm.choose_backend, fastmdlstm.MDLSTM2D.__init__, fastmdlstm.MDLSTM2D.__call__,
    fastmdlstm.MDLSTM2D.save, fastmdlstm.MDLSTM2D.load, fastmdlstm.MDLSTM2D.from_params,
], ids=lambda f: f.__qualname__)
def test_public_functions_document_and_annotate_every_argument(function):
    import inspect
    doc = inspect.getdoc(function)
    signature = inspect.signature(function)
    params = [p for p in signature.parameters if p not in ("self", "cls")]
    for name in params:
        assert re.search(rf"^{name}\b.*:|^{name}, |, {name} :", doc, re.MULTILINE), \
            f"{function.__qualname__}: {name} is not documented"
        assert signature.parameters[name].annotation is not inspect.Parameter.empty, name
    assert signature.return_annotation is not inspect.Signature.empty
    assert "Raises\n------" in doc
    if function.__name__ != "__init__":
        assert "Returns\n-------" in doc


def test_the_package_ships_its_type_hints():
    root = Path(fastmdlstm.__file__).parent
    assert (root / "py.typed").is_file()
    pyproject = (root.parent / "pyproject.toml").read_text(encoding="utf-8")
    assert re.search(r'^\[tool.setuptools.package-data\]\nfastmdlstm = \["py.typed"\]',
                     pyproject, re.MULTILINE)
