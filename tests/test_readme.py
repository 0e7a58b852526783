"""The README's code runs as written: every ```python block verbatim (each in a
fresh namespace, in a temporary folder), and every command of its ```bash blocks
names a module, script, test path and extra that exist."""

import importlib
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

import fastmdlstm

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def _blocks(language):
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 2, m.group(2))
            for m in FENCE.finditer(text) if m.group(1) == language]


PYTHON_BLOCKS = _blocks("python")
BASH_BLOCKS = _blocks("bash")


def test_the_readme_has_code_blocks():
    assert len(PYTHON_BLOCKS) >= 6 and len(BASH_BLOCKS) >= 2


@pytest.mark.parametrize("line, code", PYTHON_BLOCKS,
                         ids=[f"line{line}" for line, _ in PYTHON_BLOCKS])
def test_python_block_runs_verbatim(line, code, tmp_path, monkeypatch):
    if re.search(r"^\s*(import|from) (dask|distributed)", code, re.MULTILINE):
        pytest.importorskip("dask.array")
        pytest.importorskip("dask.distributed")
    if "fastmdlstm.kernels" in code and not fastmdlstm.HAVE_NUMBA:
        pytest.skip("numba cannot be imported")
    monkeypatch.chdir(tmp_path)  # blocks may write files (layer.save)
    exec(compile(code, f"{README}:{line}", "exec"), {"__name__": "__readme__"})


def _commands(code):
    """Each command of a bash block as a token list (comments and && split off)."""
    for raw in code.splitlines():
        line = raw.split(" #", 1)[0].strip()
        if not line or line.startswith("#"):
            continue
        for part in line.split("&&"):
            yield shlex.split(part)


def _paths_exist(args):
    for arg in args:
        if not arg.startswith("-") and "=" not in arg:
            assert (ROOT / arg).exists(), f"the README names {arg}, which does not exist"


@pytest.mark.parametrize("line, code", BASH_BLOCKS, ids=[f"line{line}" for line, _ in BASH_BLOCKS])
def test_bash_block_names_what_exists(line, code):
    """Lighter than running them (installs, full benchmark runs): every module, script,
    test path and optional extra a command names exists."""
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    checked = 0
    for tokens in _commands(code):
        if tokens[:3] == ["python", "-m", "pip"]:
            for spec in tokens[4:]:
                extras = re.fullmatch(r"\.(?:\[([\w,]+)\])?", spec)
                assert extras, f"line {line}: installs {spec!r}, not this project"
                for extra in (extras.group(1) or "").split(","):
                    assert not extra or re.search(rf"^{extra} = \[", pyproject, re.MULTILINE), \
                        f"line {line}: no optional dependency group {extra!r}"
        elif tokens[:2] == ["python", "-m"]:
            module = tokens[2]
            assert importlib.util.find_spec(module) is not None, f"no module {module}"
            if module == "pytest":
                _paths_exist(tokens[3:])
            elif module == "fastmdlstm":
                assert callable(importlib.import_module("fastmdlstm.__main__").main)
        elif tokens[0] == "python":
            _paths_exist(tokens[1:2])
        elif tokens[0] == "pytest":
            _paths_exist(tokens[1:])
        elif tokens[0] == "fastmdlstm":
            assert re.search(r'^fastmdlstm = "fastmdlstm.__main__:main"', pyproject,
                             re.MULTILINE)
        else:
            pytest.fail(f"line {line}: a command this test does not know: {tokens}")
        checked += 1
    assert checked
