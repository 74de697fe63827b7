"""Build the Cython kernels in ext/ as zfraud._<name> extension modules.

Every ext/NAME.pyx becomes zfraud._NAME. Compiler directives live here, in one place.
ZFRAUD_CYTHON_DEBUG=1 turns bounds and wraparound checks back on (for debugging, fuzzing, CI).
We build with -O3 and never with -march=native or -ffast-math: the wheel must run on any x86-64
and the kernels must give the same floats as the library that trained the model.
"""
import os
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("ZFRAUD_CYTHON_DEBUG") == "1"

DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": DEBUG,
    "initializedcheck": DEBUG,
    "cdivision": True,
    "embedsignature": True,
}

extensions = [
    Extension(
        f"zfraud._{pyx.stem}",
        [str(pyx)],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        extra_compile_args=["-O3"],
    )
    for pyx in sorted(Path("ext").glob("*.pyx"))
]

if not extensions:  # a package without its kernels would install, then fail on every import
    raise SystemExit("setup.py: no ext/*.pyx here: this source tree is incomplete (the kernels cannot be built)")

setup(ext_modules=cythonize(extensions, compiler_directives=DIRECTIVES))
