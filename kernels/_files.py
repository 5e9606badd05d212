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


def load_generated(cache, key, directory, filename, modname, make_text):
    """The generated module ``key`` of a driver: from ``cache`` (a dict), or
    written to ``directory/filename`` (only if its text changed, see
    ``write_if_changed``) and imported as ``modname``."""
    mod = cache.get(key)
    if mod is None:
        path = os.path.join(directory, filename)
        write_if_changed(path, make_text())
        mod = cache[key] = load_by_path(modname, path)
    return mod


def _local_imports(path, package_dir):
    """The files of the kernels package that the module at ``path`` imports
    (relative imports and absolute ``optkern.kernels...`` ones)."""
    import ast

    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read(), path)
    here = os.path.dirname(path)
    found = []

    def add(directory, dotted):
        base = os.path.join(directory, *dotted.split(".")) if dotted else directory
        for candidate in (base + ".py", os.path.join(base, "__init__.py")):
            if os.path.isfile(candidate):
                found.append(candidate)
                return True
        return False

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                directory = here
                for _ in range(node.level - 1):
                    directory = os.path.dirname(directory)
            elif (node.module or "").startswith("optkern.kernels"):
                directory = package_dir
                node_module = node.module[len("optkern.kernels"):].lstrip(".")
                if node_module and not add(directory, node_module):
                    continue
                for alias in node.names:
                    add(directory, ".".join(filter(None, [node_module, alias.name])))
                continue
            else:
                continue
            module = node.module or ""
            if module:      # ``from . import x`` depends on x, not the package
                add(directory, module)
            for alias in node.names:
                add(directory, ".".join(filter(None, [module, alias.name])))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("optkern.kernels."):
                    add(package_dir, alias.name[len("optkern.kernels."):])
    return found


def source_digest(roots, package_dir, extra=""):
    """A digest of every source file of the kernels package that ``roots``
    (paths) depend on: the roots and, transitively, every package module they
    import.  It names a generated module's sources, so any edit to one of
    them (a rule, a helper it inlines, a template) gives a new text and a
    recompile; there is no version number to bump by hand.  ``extra`` is
    hashed too (e.g. a generated module's own digest)."""
    import hashlib

    seen = []
    todo = [os.path.abspath(p) for p in roots]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.append(path)
        todo.extend(os.path.abspath(p) for p in _local_imports(path, package_dir))
    h = hashlib.sha256(extra.encode())
    for path in sorted(seen):
        with open(path, "rb") as fh:
            data = fh.read()
        h.update(os.path.relpath(path, package_dir).replace(os.sep, "/").encode())
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:16]
