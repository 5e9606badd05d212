"""Build the example's Cython module against optkern's public .pxd files."""
import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

import optkern.kernels.cython

ext = Extension("optkern_embed_example._cy", ["src/optkern_embed_example/_cy.pyx"],
                include_dirs=[np.get_include()],
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")])
# get_include() is where Cython finds optkern/kernels/cython/*.pxd: needed for
# an editable install of optkern, harmless for a normal one
setup(ext_modules=cythonize([ext], compiler_directives={"language_level": 3},
                            include_path=[optkern.kernels.cython.get_include()]))
