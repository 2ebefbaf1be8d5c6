"""Build hook for the optional native page trimmer (everything else is in pyproject.toml).

``pipeline/core/_pagetrim.c`` lets the lean export hand back memory-mapped weight pages while OpenVINO's
``save_model`` holds the GIL (see ``pipeline/openvino/lean.py``). It is Linux-only and optional: without a C
compiler the package installs without it and the pure-Python trimmer is used instead.
"""

import sys

from setuptools import Extension, setup

ext_modules = []
if sys.platform.startswith("linux"):
    ext_modules.append(Extension("pipeline.core._pagetrim", ["pipeline/core/_pagetrim.c"], optional=True))

setup(ext_modules=ext_modules)
