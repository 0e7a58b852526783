"""The command line under hostile conditions (issue 10): outputs that are inputs, a
full disk, signals, folders, empty and corrupted files, a threading layer that
cannot load. Every failure: one line on stderr, exit status 1 (or the signal's
status), the inputs and any previous output intact, no temporary file left."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

import fastmdlstm
from fastmdlstm import _bench, _run
from fastmdlstm.__main__ import main


@pytest.fixture
def files(tmp_path):
    layer = fastmdlstm.MDLSTM2D(3, 4, directions=("tl", "br"), seed=0)
    layer.save(tmp_path / "model.npz")
    x = np.random.default_rng(0).standard_normal((11, 5, 6, 3)).astype(np.float32)
    np.save(tmp_path / "in.npy", x)
    np.save(tmp_path / "sizes.npy", np.tile([5, 6], (11, 1)))
    return tmp_path, layer, x


def leftovers(folder):
    return [p for p in os.listdir(folder) if p.startswith(".fastmdlstm-")]


def snapshot(folder):
    return {p: (folder / p).read_bytes() for p in os.listdir(folder)
            if (folder / p).is_file()}


def run_fails(capsys, argv, words):
    """main(argv) fails with one line on stderr containing words; returns it."""
    assert main(argv) == 1
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and "error:" in err, err
    assert "Traceback" not in err and words in err, err
    return err


def never_called(*args, **kwargs):
    raise AssertionError("the kernels ran: a check came after the work")


# ---- 1. an output that is one of the inputs --------------------------------

def _same_file_cases(folder):
    os.link(folder / "in.npy", folder / "hard.npy")
    os.symlink(folder / "in.npy", folder / "soft.npy")
    os.symlink(folder / "model.npz", folder / "model-link.npz")
    os.link(folder / "sizes.npy", folder / "sizes-hard.npy")
    rel = os.path.relpath(folder / "in.npy")
    return {"input": "in.npy", "model": "model.npz", "sizes": "sizes.npy",
            "hard link to input": "hard.npy", "symlink to input": "soft.npy",
            "symlink to model": "model-link.npz", "hard link to sizes": "sizes-hard.npy",
            "relative path to input": rel}


@pytest.mark.parametrize("case", ["input", "model", "sizes", "hard link to input",
                                  "symlink to input", "symlink to model",
                                  "hard link to sizes", "relative path to input"])
def test_output_that_is_an_input_is_refused_before_any_work(files, capsys, monkeypatch,
                                                            case):
    folder, _, _ = files
    target = _same_file_cases(folder)[case]
    if not case.startswith("relative"):
        target = str(folder / target)
    before = snapshot(folder)
    monkeypatch.setattr(_run, "forward", never_called)
    run_fails(capsys, ["run", str(folder / "model.npz"), str(folder / "in.npy"),
                       "--sizes", str(folder / "sizes.npy"), "-o", target], "same file")
    assert snapshot(folder) == before and not leftovers(folder)


def test_output_distinct_from_inputs_is_fine_even_with_a_similar_name(files, capsys):
    folder, layer, x = files
    np.save(folder / "copy.npy", x)  # same bytes, another file: not the same file
    assert main(["run", str(folder / "model.npz"), str(folder / "in.npy"), "-o",
                 str(folder / "copy.npy"), "--quiet"]) == 0
    np.testing.assert_array_equal(np.load(folder / "copy.npy"), layer(x))


# ---- 2. a full disk --------------------------------------------------------

@pytest.mark.skipif(not hasattr(os, "posix_fallocate"), reason="no posix_fallocate")
def test_full_disk_is_one_line_before_writing_and_leaves_nothing(files, capsys, monkeypatch):
    folder, _, _ = files
    calls = []

    def full(fd, offset, length):
        calls.append((offset, length, os.fstat(fd).st_size))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    monkeypatch.setattr(_run, "forward", never_called)
    (folder / "out.npy").write_bytes(b"previous result")
    run_fails(capsys, ["run", str(folder / "model.npz"), str(folder / "in.npy"), "-o",
                       str(folder / "out.npy")], "disk space")
    assert calls and calls[0][0] == 0 and calls[0][1] == calls[0][2]  # the whole file
    assert (folder / "out.npy").read_bytes() == b"previous result"
    assert not leftovers(folder)


@pytest.mark.skipif(not hasattr(os, "posix_fallocate"), reason="no posix_fallocate")
def test_file_system_without_fallocate_still_works(files, capsys, monkeypatch):
    folder, layer, x = files

    def unsupported(fd, offset, length):
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    assert main(["run", str(folder / "model.npz"), str(folder / "in.npy"), "-o",
                 str(folder / "out.npy"), "--quiet"]) == 0
    np.testing.assert_array_equal(np.load(folder / "out.npy"), layer(x))


# ---- 3. SIGTERM / SIGHUP during run ----------------------------------------

@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_terminating_signals_remove_the_temporary_output(tmp_path, signame):
    # The python backend needs no compilation; one image per chunk, many images: the
    # run lasts far longer than the test waits for it.
    layer = fastmdlstm.MDLSTM2D(1, 4, seed=0)
    layer.save(tmp_path / "m.npz")
    np.save(tmp_path / "x.npy", np.zeros((20000, 16, 16, 1), np.float32))
    proc = subprocess.Popen(
        [sys.executable, "-m", "fastmdlstm", "run", str(tmp_path / "m.npz"),
         str(tmp_path / "x.npy"), "-o", str(tmp_path / "out.npy"), "--batch-size", "1",
         "--backend", "python"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not leftovers(tmp_path) and proc.poll() is None:
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.05)
        time.sleep(0.3)  # inside the chunk loop
        assert proc.poll() is None
        proc.send_signal(getattr(signal, signame))
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 128 + getattr(signal, signame)
    assert err.strip() == f"fastmdlstm run: terminated by {signame}"
    assert not leftovers(tmp_path) and not (tmp_path / "out.npy").exists()


def test_signal_handlers_are_restored_after_run(files):
    folder, _, _ = files
    before = signal.getsignal(signal.SIGTERM)
    assert main(["run", str(folder / "model.npz"), str(folder / "in.npy"), "-o",
                 str(folder / "out.npy"), "--quiet"]) == 0
    assert signal.getsignal(signal.SIGTERM) is before


# ---- 4. -o naming a folder -------------------------------------------------

@pytest.mark.parametrize("how", ["folder", "symlink to a folder", "the current folder",
                                 "empty name", "trailing slash"])
def test_output_folder_is_refused_before_any_work(files, capsys, monkeypatch, how):
    folder, _, _ = files
    (folder / "sub").mkdir()
    os.symlink(folder / "sub", folder / "link")
    target = {"folder": str(folder / "sub"), "symlink to a folder": str(folder / "link"),
              "the current folder": ".", "empty name": "",
              "trailing slash": str(folder / "new") + os.sep}[how]
    monkeypatch.setattr(_run, "forward", never_called)
    monkeypatch.setattr(_run, "_load_model", never_called)
    run_fails(capsys, ["run", str(folder / "model.npz"), str(folder / "in.npy"), "-o",
                       target], "folder" if "folder" in how else "not a file name")
    assert not leftovers(folder) and not leftovers(folder / "sub")


# ---- 5. never a traceback: empty, corrupted, hostile files ------------------

def _corrupt_compressed(path, out):
    """Copy of an .npz saved compressed with bytes of a member's deflate stream
    flipped (its local header intact)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("weights.npy")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    for k in range(start + 10, start + min(info.compress_size, 200)):
        data[k] ^= 0x5A
    out.write_bytes(bytes(data))


def _model_with_meta(folder, name, meta_text, layer):
    np.savez(folder / name, weights=layer.weights, bias=layer.bias, meta=np.array(meta_text))


def _hostile_cases(folder, layer):
    for name in ("empty.npz", "empty.npy", "empty-sizes.npy"):
        (folder / name).write_bytes(b"")
    np.savez_compressed(folder / "compressed.npz", weights=layer.weights, bias=layer.bias,
                        meta=np.load(folder / "model.npz")["meta"])
    _corrupt_compressed(folder / "compressed.npz", folder / "corrupt-member.npz")
    whole = (folder / "compressed.npz").read_bytes()
    (folder / "truncated.npz").write_bytes(whole[: len(whole) * 2 // 3])
    meta = json.loads(str(np.load(folder / "model.npz")["meta"]))
    _model_with_meta(folder, "nested.npz", "[" * 100_000 + "]" * 100_000, layer)
    _model_with_meta(folder, "nested-dict.npz", json.dumps(meta)[:-1] + ', "extra": '
                     + '{"a": ' * 50_000 + "1" + "}" * 50_000 + "}", layer)
    _model_with_meta(folder, "huge.npz", json.dumps(meta).replace(
        '"hidden_size": 4', '"hidden_size": 1e999'), layer)
    _model_with_meta(folder, "hugeint.npz", json.dumps(meta).replace(
        '"input_size": 3', '"input_size": ' + "9" * 5000), layer)
    _model_with_meta(folder, "nan.npz", json.dumps(meta).replace(
        '"input_size": 3', '"input_size": NaN'), layer)
    x = np.zeros((11, 5, 6, 3), np.float32)
    np.save(folder / "short.npy", x)
    raw = (folder / "short.npy").read_bytes()
    (folder / "short.npy").write_bytes(raw[: len(raw) // 2])  # data shorter than its header
    np.save(folder / "object.npy", np.array([None, 1], dtype=object), allow_pickle=True)
    m, x = str(folder / "model.npz"), str(folder / "in.npy")
    return {
        "empty model": ([str(folder / "empty.npz"), x], "empty file"),
        "empty input": ([m, str(folder / "empty.npy")], "empty file"),
        "empty sizes": ([m, x, "--sizes", str(folder / "empty-sizes.npy")], "empty file"),
        "corrupt member": ([str(folder / "corrupt-member.npz"), x], "model"),
        "truncated archive": ([str(folder / "truncated.npz"), x], "model"),
        "nested metadata": ([str(folder / "nested.npz"), x], "model"),
        "nested directions": ([str(folder / "nested-dict.npz"), x], "model"),
        "huge float": ([str(folder / "huge.npz"), x], "model"),
        "huge int": ([str(folder / "hugeint.npz"), x], "model"),
        "nan size": ([str(folder / "nan.npz"), x], "model"),
        "truncated input": ([m, str(folder / "short.npy")], "input"),
        "object input": ([m, str(folder / "object.npy")], "input"),
        "folder as model": ([str(folder), x], "model"),
        "folder as input": ([m, str(folder)], "input"),
        "folder as sizes": ([m, x, "--sizes", str(folder)], "sizes"),
    }


HOSTILE = ["empty model", "empty input", "empty sizes", "corrupt member",
           "truncated archive", "nested metadata", "nested directions", "huge float",
           "huge int", "nan size", "truncated input", "object input", "folder as model",
           "folder as input", "folder as sizes"]


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_files_are_one_line(files, capsys, case):
    folder, layer, _ = files
    argv, words = _hostile_cases(folder, layer)[case]
    (folder / "out.npy").write_bytes(b"previous result")
    run_fails(capsys, ["run", *argv, "-o", str(folder / "out.npy")], words)
    assert (folder / "out.npy").read_bytes() == b"previous result"
    assert not leftovers(folder)


def test_the_compressed_model_itself_loads(files, capsys):
    """The corrupted cases are corrupted, not unreadable by construction."""
    folder, layer, x = files
    _hostile_cases(folder, layer)
    assert main(["run", str(folder / "compressed.npz"), str(folder / "in.npy"), "-o",
                 str(folder / "out.npy"), "--quiet"]) == 0
    np.testing.assert_array_equal(np.load(folder / "out.npy"), layer(x))


def test_multi_line_messages_become_one_line():
    assert _run.one_line(ValueError("a\nHINT:\n  b  c\n")) == "a HINT: b c"
    assert _run.one_line(KeyError()) == "KeyError"


def test_unexpected_exceptions_are_one_line_with_their_type(files, capsys, monkeypatch):
    folder, _, _ = files

    def broken(*args, **kwargs):
        raise RuntimeError("something\nnobody expected")

    monkeypatch.setattr(_run, "forward", broken)
    err = run_fails(capsys, ["run", str(folder / "model.npz"), str(folder / "in.npy"), "-o",
                             str(folder / "out.npy")], "RuntimeError: something nobody")
    assert err.startswith("fastmdlstm run: error:")
    assert not leftovers(folder)


def _cli(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "fastmdlstm", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=300)


def _tbb_missing():
    import importlib.util
    return importlib.util.find_spec("tbb") is None


@pytest.mark.parametrize("command, layer", [
    ("run", "no-such-layer"), ("run --threads 1", "no-such-layer"),
    ("info", "no-such-layer"), ("demo", "no-such-layer"),
    pytest.param("run", "tbb", marks=pytest.mark.skipif(
        not _tbb_missing(), reason="tbb is installed")),  # a multi-line message: one line
])
def test_threading_layer_that_cannot_load_is_one_line(files, command, layer):
    pytest.importorskip("numba")
    folder, _, _ = files
    args = command.split()
    if args[0] == "run":
        args[1:1] = [str(folder / "model.npz"), str(folder / "in.npy"), "-o",
                     str(folder / "out.npy")]
    env = dict(os.environ, NUMBA_THREADING_LAYER=layer)
    result = _cli(*args, env=env)
    assert result.returncode == 1, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert "threading layer" in result.stderr and repr(layer) in result.stderr
    assert not (folder / "out.npy").exists() and not leftovers(folder)


# ---- 9. bench --repeat 0 ---------------------------------------------------

@pytest.mark.parametrize("repeat", ["0", "-2"])
def test_bench_repeat_below_one_is_refused(capsys, repeat):
    run_fails(capsys, ["bench", "tiny", "--no-python", "--repeat", repeat], "--repeat")


def test_time_call_refuses_zero_repeats():
    with pytest.raises(ValueError, match="repeat"):
        _bench.time_call(lambda: None, repeat=0)


def test_bench_plot_into_a_missing_folder_fails_before_timing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(_bench, "forward", never_called)
    run_fails(capsys, ["bench", "tiny", "--plot", str(tmp_path / "no" / "p.png")],
              "does not exist")


# ---- 11. the compile notice ------------------------------------------------

def test_slow_first_call_prints_the_compile_notice_once(files, capsys, monkeypatch):
    folder, layer, x = files
    real = _run.forward

    def slow(*args, **kwargs):  # a first call that compiles
        time.sleep(0.5)
        return real(*args, **kwargs)

    monkeypatch.setattr(_run, "forward", slow)
    monkeypatch.setattr(_run, "COMPILE_NOTICE_AFTER_S", 0.05)
    monkeypatch.setattr(_run, "_notice_printed", False)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["run", str(folder / "model.npz"), str(folder / "in.npy"), "-o",
                 str(folder / "out.npy"), "--batch-size", "4"]) == 0
    err = capsys.readouterr().err
    assert err.count("compiling kernels once, cached afterwards") == 1
    np.testing.assert_array_equal(np.load(folder / "out.npy"), layer(x))
    # --quiet, or no terminal: nothing
    monkeypatch.setattr(_run, "_notice_printed", False)
    assert main(["run", str(folder / "model.npz"), str(folder / "in.npy"), "-o",
                 str(folder / "out.npy"), "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_fast_first_call_prints_no_notice(capsys, monkeypatch):
    monkeypatch.setattr(_run, "_notice_printed", False)
    with _run.compile_notice(True):
        pass
    time.sleep(0.05)
    assert capsys.readouterr().err == ""


# ---- 12. the machine and its FMA peak --------------------------------------

def test_fma_peak_is_measured():
    pytest.importorskip("numba")
    one = _bench.fma_peak(threads=1, min_time=0.002, repeat=1)
    assert one is not None and one > 0
    assert _bench.fma_peak(dtype=np.float64, min_time=0.002, repeat=1) > 0


@pytest.mark.parametrize("family, model, vendor, expected", [
    (25, 17, "AuthenticAMD", "AMD EPYC (family 25 model 17, Zen 4 class)"),
    (25, 1, "AuthenticAMD", "AMD EPYC (family 25 model 1, Zen 3 class)"),
    (26, 2, "AuthenticAMD", "AMD EPYC (family 26 model 2, Zen 5 class)"),
    (6, 143, "GenuineIntel", "AMD EPYC (family 6 model 143)"),
])
def test_cpu_description_names_family_model_and_class(monkeypatch, family, model, vendor,
                                                       expected):
    monkeypatch.setattr(_bench, "_cpuinfo", lambda: {
        "model name": "AMD EPYC", "cpu family": str(family), "model": str(model),
        "vendor_id": vendor})
    assert _bench.cpu_description() == expected


def test_info_and_bench_show_the_cpu_and_fma_peak(capsys):
    pytest.importorskip("numba")
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "FMA peak" in out and "family" in out
    assert main(["bench", "tiny", "--no-python", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert "% of FMA peak" in out and "family" in out and "nan" not in out.lower()


# ---- 15. no source-tree paths in an installed package; the cache ------------

def test_info_does_not_point_at_files_an_installed_package_lacks(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "CROSSOVER.md" not in out and "bench/crossover.py" in out
    assert str(fastmdlstm._dispatch.PARALLEL_MIN_MACS) in out


def test_a_source_checkout_caches_kernels_outside_the_tree(tmp_path):
    numba = pytest.importorskip("numba")
    if numba.config.DISABLE_JIT:
        pytest.skip("no compiled code to cache under NUMBA_DISABLE_JIT")
    package = os.path.dirname(os.path.abspath(fastmdlstm.__file__))
    if not os.path.exists(os.path.join(os.path.dirname(package), ".git")):
        pytest.skip("fastmdlstm is not imported from a git checkout")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["XDG_CACHE_HOME"] = str(tmp_path / "xdg")
    env["PYTHONPATH"] = os.path.dirname(package)  # this checkout, whatever is installed
    code = ("import fastmdlstm.__main__ as m, numba\n"
            "@numba.njit(cache=True)\ndef own(x): return x\n"
            "print(m._cache_dir()); print(own._cache._cache_path)")
    script = tmp_path / "own.py"
    script.write_text(code)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            env=env, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    ours, theirs = result.stdout.split("\n")[:2]
    assert ours.startswith(str(tmp_path / "xdg" / "fastmdlstm" / "numba"))
    assert not ours.startswith(package)
    assert not theirs.startswith(str(tmp_path / "xdg"))  # users' own functions: untouched
    # NUMBA_CACHE_DIR, when set, wins
    env["NUMBA_CACHE_DIR"] = str(tmp_path / "mine")
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            env=env, timeout=300, cwd=tmp_path)
    assert result.stdout.startswith(str(tmp_path / "mine")), result.stderr
