"""The command line: run over .npy files, errors as one line, demo/bench/info."""

import os

import numpy as np
import pytest

import fastmdlstm
from fastmdlstm.__main__ import main


@pytest.fixture
def files(tmp_path):
    layer = fastmdlstm.MDLSTM2D(3, 4, directions=("tl", "br"), seed=0)
    layer.save(tmp_path / "model.npz")
    x = np.random.default_rng(0).standard_normal((11, 5, 6, 3)).astype(np.float32)
    np.save(tmp_path / "in.npy", x)
    return tmp_path, layer, x


def leftovers(folder):
    return [p for p in os.listdir(folder) if p.startswith(".fastmdlstm-")]


@pytest.mark.parametrize("batch_size", [None, 1, 4, 11, 50])
def test_run_matches_the_layer(files, capsys, batch_size):
    folder, layer, x = files
    args = ["run", str(folder / "model.npz"), str(folder / "in.npy"), "-o",
            str(folder / "out.npy")]
    if batch_size is not None:
        args += ["--batch-size", str(batch_size)]
    assert main(args) == 0
    np.testing.assert_array_equal(np.load(folder / "out.npy"), layer(x))
    out, err = capsys.readouterr()
    assert "images/s" in out and err == ""  # no progress bar when not on a terminal
    assert not leftovers(folder)


def test_run_with_sizes_threads_and_3d(tmp_path, capsys):
    layer = fastmdlstm.MDLSTM3D(2, 3, directions=((1, 1, 1), (-1, 1, -1)), dtype=np.float64,
                                seed=1)
    layer.save(tmp_path / "m3.npz")
    x = np.random.default_rng(1).standard_normal((5, 3, 4, 5, 2))
    sizes = np.array([[3, 4, 5], [1, 2, 3], [2, 4, 1], [3, 1, 5], [1, 1, 1]])
    np.save(tmp_path / "x.npy", x.astype(np.float32))  # cast to the model's float64
    np.save(tmp_path / "s.npy", sizes)
    assert main(["run", str(tmp_path / "m3.npz"), str(tmp_path / "x.npy"), "-o",
                 str(tmp_path / "h.npy"), "--sizes", str(tmp_path / "s.npy"),
                 "--batch-size", "2", "--threads", "1", "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")
    expected = layer(x.astype(np.float32).astype(np.float64), sizes=sizes)
    np.testing.assert_array_equal(np.load(tmp_path / "h.npy"), expected)


def _bad_cases(folder):
    np.save(folder / "c2.npy", np.zeros((2, 5, 6, 2), np.float32))
    np.save(folder / "nd.npy", np.zeros((2, 5, 3), np.float32))
    np.save(folder / "cplx.npy", np.zeros((2, 5, 6, 3), np.complex64))
    np.save(folder / "sizes_bad.npy", np.ones((3, 2), np.int64))
    np.save(folder / "sizes_big.npy", np.full((11, 2), 9, np.int64))
    (folder / "junk.npy").write_bytes(b"not an npy file")
    (folder / "broken.npz").write_bytes(b"PK\x03\x04 truncated zip")
    np.savez(folder / "arch.npz", a=np.zeros(3))
    np.savez(folder / "meta_list.npz", weights=np.zeros((1, 11, 20)), bias=np.zeros((1, 20)),
             meta=np.array("[1, 2]"))
    m, x = str(folder / "model.npz"), str(folder / "in.npy")
    return {
        "missing input": ([m, str(folder / "nope.npy")], "no such file"),
        "missing model": ([str(folder / "nope.npz"), x], "no such file"),
        "not a model": ([str(folder / "in.npy"), x], "model"),
        "junk input": ([m, str(folder / "junk.npy")], "not a readable"),
        "channels": ([m, str(folder / "c2.npy")], "channels"),
        "ndim": ([m, str(folder / "nd.npy")], "spatial"),
        "complex": ([m, str(folder / "cplx.npy")], "dtype"),
        "sizes shape": ([m, x, "--sizes", str(folder / "sizes_bad.npy")], "sizes"),
        "sizes too big": ([m, x, "--sizes", str(folder / "sizes_big.npy")], "sizes"),
        "batch size": ([m, x, "--batch-size", "0"], "batch-size"),
        "threads": ([m, x, "--threads", "0"], "threads"),
        "npz as input": ([m, str(folder / "arch.npz")], ".npz"),
        "corrupt model": ([str(folder / "broken.npz"), x], "model"),
        "bad metadata": ([str(folder / "meta_list.npz"), x], "model"),
    }


BAD = ["missing input", "missing model", "not a model", "junk input", "channels", "ndim",
       "complex", "sizes shape", "sizes too big", "batch size", "threads", "npz as input",
       "corrupt model", "bad metadata"]


@pytest.mark.parametrize("case", BAD)
def test_run_errors_are_one_line_and_leave_nothing(files, capsys, case):
    folder, _, _ = files
    argv, words = _bad_cases(folder)[case]
    target = folder / "out.npy"
    target.write_bytes(b"previous result")  # must survive a failed run
    assert main(["run", *argv, "-o", str(target)]) == 1
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith("fastmdlstm run: error:") and words in err
    assert "Traceback" not in err and out == ""
    assert target.read_bytes() == b"previous result"
    assert not leftovers(folder)


def test_run_threads_option_is_restored_and_output_permissions(files):
    numba = pytest.importorskip("numba")
    folder, layer, x = files
    before = numba.get_num_threads()
    umask = os.umask(0o022)
    try:
        assert main(["run", str(folder / "model.npz"), str(folder / "in.npy"), "-o",
                     str(folder / "out.npy"), "--threads", "1", "--quiet"]) == 0
    finally:
        os.umask(umask)
    assert numba.get_num_threads() == before
    assert (folder / "out.npy").stat().st_mode & 0o777 == 0o644


def test_run_output_folder_missing(files, capsys):
    folder, _, _ = files
    assert main(["run", str(folder / "model.npz"), str(folder / "in.npy"), "-o",
                 str(folder / "no" / "out.npy")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_info_bench_demo(capsys, tmp_path):
    assert main(["info"]) == 0
    assert "dispatcher" in capsys.readouterr().out
    assert main(["bench", "tiny", "--no-python", "--repeat", "1"]) == 0
    assert "GFLOP/s" in capsys.readouterr().out
    assert main(["bench", "nonesuch"]) == 2
    assert main(["demo", "--config", "tiny"]) == 0
    assert "auto ->" in capsys.readouterr().out
    plot = tmp_path / "p.png"
    code = main(["bench", "tiny", "--no-python", "--repeat", "1", "--plot", str(plot)])
    try:
        import matplotlib  # noqa: F401
        assert code == 0 and plot.stat().st_size > 0
    except ImportError:
        assert code == 1 and "matplotlib" in capsys.readouterr().err
