import pytest


@pytest.fixture
def threads():
    """Run a block with a given numba thread count, restoring it afterwards."""
    numba = pytest.importorskip("numba")
    before = numba.get_num_threads()
    yield numba.set_num_threads
    numba.set_num_threads(before)
