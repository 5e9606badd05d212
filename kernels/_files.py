"""Writing generated source files (no imports from the package: the Cython
generators load this file by path at build time, before optkern exists)."""

import os
import tempfile


def write_if_changed(path, text):
    """Write ``text`` to ``path`` atomically, and only if it differs.

    Unchanged text keeps the file's mtime, so neither cythonize nor Numba's
    cache sees a change; the temporary file plus ``os.replace`` means a
    concurrent reader (another test worker, another process compiling) never
    sees half a file.  mkstemp creates 0600 files: they are made readable by
    every user of a shared install.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            if fh.read() == text:
                return False
    except OSError:
        pass
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return True


def load_by_path(name, path):
    """Import the module at ``path`` under ``name`` (registered in sys.modules,
    which namedtuple and inspect need)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def load_package(name, directory):
    """Import the package in ``directory`` (its ``__init__.py``) under ``name``,
    or return it if it is already imported under any name."""
    import importlib.util
    import os
    import sys

    init = os.path.join(directory, "__init__.py")
    for mod in list(sys.modules.values()):
        f = getattr(mod, "__file__", None)
        if f and os.path.abspath(f) == os.path.abspath(init):
            return mod
    spec = importlib.util.spec_from_file_location(name, init,
                                                  submodule_search_locations=[directory])
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod
