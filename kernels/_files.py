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
    every user of a shared install.  ``text`` may be ``bytes`` (written as
    they are: the rules' cached built code, kernels/rules.py).
    """
    binary = isinstance(text, bytes)
    try:
        with open(path, "rb") if binary else open(path, encoding="utf-8") as fh:
            if fh.read() == text:
                return False
    except OSError:
        pass
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8") as fh:
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


def rulelang():
    """The rule language's package (kernels/rulelang), for a module loaded by
    path without the package (rules.py, rule_lanes.py and the Cython
    generators at build time): imported once under ``_optkern_rulelang``,
    or the copy already imported under any name (``load_package``)."""
    here = os.path.dirname(os.path.abspath(__file__))
    return load_package("_optkern_rulelang", os.path.join(here, "rulelang"))


def rulelang_files():
    """The rule language's source files (kernels/rulelang/*.py), sorted: the
    sources of text the language makes (the lane forms of kernels/rule_lanes.py,
    the epoch's loop of kernels/epoch_drivers.py), hashed into their keys."""
    lang = os.path.join(os.path.dirname(os.path.abspath(__file__)), "rulelang")
    return [os.path.join(lang, f) for f in sorted(os.listdir(lang)) if f.endswith(".py")]


def load_generated(cache, key, directory, filename, modname, make_text):
    """The generated module ``key`` of a driver: from ``cache`` (a dict), or
    written to ``directory()/filename`` (only if its text changed, see
    ``write_if_changed``) and imported as ``modname``.  ``directory`` is a
    function (``drivers.generated_dir``), called only when the module is not
    cached: it makes and probes the folder (mkdir, access: three system calls,
    9 us), and the loss kernels look their module up on every call.

    A rule without state arrays (e.g. sign descent) leaves the state holes of
    argument lists empty: their ", ," becomes ",", which changes no other
    module (valid generated code never holds ", ,"), and ``p_i, = rule(...)``
    unpacks the rule's 1-tuple."""
    mod = cache.get(key)
    if mod is None:
        path = os.path.join(directory(), filename)
        text = make_text()
        while ", ," in text:        # ", , ," (two empty holes in a row) too
            text = text.replace(", ,", ",")
        write_if_changed(path, text)
        mod = cache[key] = load_by_path(modname, path)
    return mod


def cached_json(path, key, build, valid=lambda value: True):
    """``build()``'s value (JSON: strings, numbers, lists, None), kept in the
    file ``path`` under ``key``: read back when the file holds that key and
    ``valid(value)``, else built and written (``write_if_changed``: atomic).
    A missing, stale, truncated or corrupt file means building; a file that
    cannot be written is left as it is.  For text a generated module is made
    from that would otherwise load the rule language's front end in every
    process (``load_generated`` remakes a module's text each time): the lane
    forms of kernels/rule_lanes.py, the epoch's loop of kernels/epoch_drivers.py."""
    import json
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        if data["key"] == key and valid(data["value"]):
            return data["value"]
    except (OSError, ValueError, KeyError, TypeError):    # missing, truncated, corrupt
        pass
    value = build()
    try:
        write_if_changed(path, json.dumps({"key": key, "value": value}))
    except OSError:
        pass
    return value


_IMPORT = None


def _local_imports(path, package_dir, text=None):
    """The files of the kernels package that the module at ``path`` imports:
    relative imports and absolute ``optkern.kernels...`` ones, read from the
    text's ``from ... import`` / ``import`` lines (a scan, not ``ast``: this
    runs before a kernel's first call, and walking the trees of the larger
    drivers took 60-250 ms; an import line inside a string template counts
    too, which is what a generated module's imports are)."""
    import re

    global _IMPORT
    if _IMPORT is None:
        # a line's start spelled "\n" (the text is read with one in front),
        # not ``^`` with re.M: a pattern that starts with a literal is tried
        # at the newlines only, not at every character (5x faster on the
        # package's files, the same matches)
        _IMPORT = re.compile(
            r"\n[ \t]*(?:from[ \t]+(\.+|optkern\.kernels\b\.?)([\w.]*)[ \t]+import[ \t]+"
            r"(\([^)]*\)|[^\n#]*)|import[ \t]+optkern\.kernels\.([\w.]+))")
    if text is None:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    text = "\n" + text
    found = []

    def add(directory, dotted):
        base = os.path.join(directory, *dotted.split(".")) if dotted else directory
        for candidate in (base + ".py", os.path.join(base, "__init__.py")):
            if os.path.isfile(candidate):
                found.append(candidate)
                return True
        return False

    for m in _IMPORT.finditer(text):
        prefix, module, names, plain = m.groups()
        if plain:
            add(package_dir, plain)
            continue
        if prefix.startswith("."):
            directory = os.path.dirname(path)
            for _ in range(len(prefix) - 1):
                directory = os.path.dirname(directory)
        else:
            directory = package_dir
        if module and not add(directory, module):
            continue        # ``from . import x`` depends on x, not the package
        if module and not os.path.isdir(os.path.join(directory, *module.split("."))):
            continue        # names from a module that is not a package are no files:
            #                 one stat for the line, not two for each name
        for name in names.strip("()").replace("\n", " ").split(","):
            name = name.split(" as ")[0].strip()
            if name.isidentifier():
                add(directory, ".".join(filter(None, [module, name])))
    return found


_SHA = {}
_IMPORTS = {}


def _read_bytes(path, size):
    """The file's bytes, read with ``os.read`` (``open()`` cost a fifth of a
    warm first optimizer step when the rules' sources are hashed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = [os.read(fd, size + 1)]
        while chunks[-1]:
            chunks.append(os.read(fd, 1 << 16))
    finally:
        os.close(fd)
    return b"".join(chunks)


def _file_facts(path, package_dir, follow_imports=True):
    """(sha256 of the file, the package files it imports, or none without
    ``follow_imports``), remembered per (path, mtime, size): a process
    generating many modules reads each once.  The hash and the imports are
    remembered apart, and the imports are scanned from the bytes that were
    hashed: a file asked for both ways (rules.py's built code hashes its
    files without their imports, the drivers' keys with them) is read and
    hashed once."""
    st = os.stat(path)
    key = (path, st.st_mtime_ns, st.st_size)
    sha = _SHA.get(key)
    data = None
    if sha is None:
        import hashlib

        data = _read_bytes(path, st.st_size)
        sha = _SHA[key] = hashlib.sha256(data).digest()
    if not follow_imports:
        return sha, []
    imports = _IMPORTS.get(key)
    if imports is None:
        # (the bytes as text, unless a "\r" asks for open()'s newline rule)
        text = None if data is None or b"\r" in data else data.decode("utf-8")
        imports = _IMPORTS[key] = [os.path.abspath(p)
                                   for p in _local_imports(path, package_dir, text)]
    return sha, imports


def source_digest(roots, package_dir, extra="", follow_imports=True):
    """A digest of every source file of the kernels package that ``roots``
    (paths) depend on: the roots and, transitively, every package module they
    import.  It names a generated module's sources, so any edit to one of
    them (a rule, a helper it inlines, a template) gives a new text and a
    recompile; there is no version number to bump by hand.  ``extra`` is
    hashed too (e.g. a generated module's own digest).  With
    ``follow_imports=False`` only the roots are hashed (the caller lists
    every source: kernels/rules.py's built code, whose module imports more
    than that code depends on)."""
    import hashlib

    seen = {}
    todo = [os.path.abspath(p) for p in roots]
    while todo:
        path = todo.pop()
        if path not in seen:
            seen[path] = _file_facts(path, package_dir, follow_imports)
            todo.extend(seen[path][1])
    h = hashlib.sha256(extra.encode())
    # a path under the package is cut at its prefix (what relpath returns for
    # these absolute, normalised paths; relpath itself cost as much as the
    # hashing on a warm first optimizer step)
    top = os.path.abspath(package_dir) + os.sep
    for path in sorted(seen):
        rel = path[len(top):] if path.startswith(top) else os.path.relpath(path, package_dir)
        h.update(rel.replace(os.sep, "/").encode())
        h.update(seen[path][0])
    return h.hexdigest()[:16]
