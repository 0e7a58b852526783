"""Where a source checkout caches its compiled kernels.

Numba caches a `cache=True` function next to its source file (`__pycache__`) when
that folder is writable. For an installed package that is site-packages, as for
`.pyc` files. For a git checkout it is the source tree, which `python -m fastmdlstm`
run from the repository root (the checkout shadows any installed copy) or an
editable install fill with compiled code. So, for fastmdlstm's own source files
only, and only when the package sits in a git checkout and NUMBA_CACHE_DIR is not
set, the kernels are cached under the user's cache folder instead:
$XDG_CACHE_HOME/fastmdlstm/numba (default ~/.cache/fastmdlstm/numba), one
subfolder per checkout. Users' own numba functions are not affected.

This adds a locator to numba's list of cache locators (an internal of
numba.core.caching); with a numba where that list is missing it does nothing and
numba's default rule applies.
"""

import os

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def in_checkout(package_dir=PACKAGE_DIR):
    """Whether the package is imported from a git checkout (a .git folder, or file
    for a worktree, next to the package folder)."""
    return os.path.exists(os.path.join(os.path.dirname(package_dir), ".git"))


def user_cache_root():
    """$XDG_CACHE_HOME/fastmdlstm/numba, by default ~/.cache/fastmdlstm/numba."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fastmdlstm", "numba")


def _install():
    try:
        from numba.core import caching, config
        locators = caching.CacheImpl._locator_classes
        base = (caching._SourceFileBackedLocatorMixin, caching._CacheLocator)
    except (ImportError, AttributeError):  # no numba, or other internals: numba's rule
        return None

    class CheckoutCacheLocator(*base):
        """fastmdlstm's source files in a git checkout: the user's cache folder."""

        def __init__(self, py_func, py_file):
            self._py_file = py_file
            self._lineno = py_func.__code__.co_firstlineno
            self._cache_path = os.path.join(user_cache_root(),
                                            self.get_suitable_cache_subpath(py_file))

        def get_cache_path(self):
            return self._cache_path

        @classmethod
        def from_function(cls, py_func, py_file):
            if config.CACHE_DIR or not in_checkout():
                return None
            if os.path.dirname(os.path.abspath(py_file)) != PACKAGE_DIR:
                return None
            return super().from_function(py_func, py_file)  # None if not writable

    if not any(c.__name__ == CheckoutCacheLocator.__name__ for c in locators):
        locators.insert(0, CheckoutCacheLocator)
    return CheckoutCacheLocator


_install()
