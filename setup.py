"""Build the ahead-of-time Cython kernels.

kernels/cython/generate.py writes the Cython sources from the same scalar
rules the Numba drivers compile (kernels/rules.py), then they are cythonized.
OpenMP is used when the compiler accepts -fopenmp; otherwise the kernels are
built serial (prange degrades to range) and optkern reports it at runtime.
OPTKERN_NATIVE=1 builds for the host CPU (-march=native): faster at large
sizes, not portable to older CPUs.
"""
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))
CYTHON_DIR = os.path.join(HERE, "kernels", "cython")


def _compiler_has_openmp():
    """Try to compile and link a tiny OpenMP program with the default C compiler."""
    if os.environ.get("OPTKERN_NO_OPENMP"):
        return False
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        return False
    src = "#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n"
    with tempfile.TemporaryDirectory() as tmp:
        cfile = os.path.join(tmp, "t.c")
        with open(cfile, "w") as fh:
            fh.write(src)
        try:
            res = subprocess.run([cc, "-fopenmp", cfile, "-o", os.path.join(tmp, "t")],
                                 capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return False
        return res.returncode == 0


def _pxd_include_dir():
    """An include directory in which Cython finds our .pxd files by full name.

    Cython looks up a module's own .pxd (and any cimported one) as
    <include dir>/optkern/kernels/cython/<name>.pxd, but package_dir maps
    optkern.kernels to kernels/, so that layout does not exist in the source
    tree; mirror the .pxd files into build/cython_include (copied only when
    changed, so cythonize does not rebuild needlessly).
    """
    root = os.path.join(HERE, "build", "cython_include")
    pkg = os.path.join(root, "optkern", "kernels", "cython")
    os.makedirs(pkg, exist_ok=True)
    for d in (os.path.join(root, "optkern"), os.path.join(root, "optkern", "kernels"), pkg):
        marker = os.path.join(d, "__init__.pxd")
        if not os.path.exists(marker):
            open(marker, "w").close()
    for fname in os.listdir(CYTHON_DIR):
        if fname.endswith(".pxd"):
            src, dst = os.path.join(CYTHON_DIR, fname), os.path.join(pkg, fname)
            with open(src, "rb") as fh:
                text = fh.read()
            try:
                with open(dst, "rb") as fh:
                    same = fh.read() == text
            except OSError:
                same = False
            if not same:
                with open(dst, "wb") as fh:
                    fh.write(text)
    return root


def _extensions():
    # every kernels/cython/generate*.py writes .pyx sources from the rules
    import importlib.util

    sources = []
    for fname in sorted(os.listdir(CYTHON_DIR)):
        if fname.startswith("generate") and fname.endswith(".py"):
            spec = importlib.util.spec_from_file_location(
                "_optkern_" + fname[:-3], os.path.join(CYTHON_DIR, fname))
            gen = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(gen)
            sources.extend(gen.write_sources(CYTHON_DIR))
    # hand-written kernels (e.g. _losses.pyx) sit beside the generated ones
    generated = {path for _, path in sources}
    for fname in sorted(os.listdir(CYTHON_DIR)):
        path = os.path.join(CYTHON_DIR, fname)
        if fname.startswith("_") and fname.endswith(".pyx") and path not in generated:
            sources.append((fname[:-4], path))
    openmp = _compiler_has_openmp()
    flags = ["-O3"]
    if os.environ.get("OPTKERN_NATIVE"):
        # opt-in: code for this CPU only (AVX2/AVX-512 where present); the
        # default build stays portable to any x86-64 it is copied to
        flags.append("-march=native")
    link = []
    if openmp:
        flags.append("-fopenmp")
        link.append("-fopenmp")
    else:
        print("optkern: compiler has no OpenMP; building serial Cython kernels", file=sys.stderr)
    exts = [
        Extension(
            f"optkern.kernels.cython.{name}",
            # setuptools insists on paths relative to setup.py
            [os.path.relpath(path, HERE)],
            include_dirs=[np.get_include()],
            extra_compile_args=flags,
            extra_link_args=link,
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
                           ("OPTKERN_OPENMP", "1" if openmp else "0")],
        )
        for name, path in sources
    ]
    from Cython.Build import cythonize

    return cythonize(exts, compiler_directives={"language_level": 3},
                     compile_time_env={"OPTKERN_OPENMP": openmp},
                     include_path=[_pxd_include_dir()])


setup(ext_modules=_extensions())
