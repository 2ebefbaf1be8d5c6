"""What the NPU library's environment installs, as data (:class:`pipeline.core.package_sets.PackageSet`).

Read by ``tests/windows/test_windows_resolver.py``, which resolves it for Windows; :mod:`pipeline.npu_lib.env`
installs it (torch first, then the requirements, under the environment's constraints), and
:mod:`pipeline.npu_lib.build` the library's own wheel with ``--no-deps``.
"""

from __future__ import annotations

from pipeline.core.package_sets import PackageSet, read_constraints
from pipeline.npu_lib.build import LIBRARY, LIBRARY_VERSION
from pipeline.npu_lib.env import CONSTRAINTS, PYTHONS, REQUIREMENTS, TORCH


def package_set() -> PackageSet:
    """The environment's packages on Windows: torch, the requirements, then the library's wheel (``--no-deps``)."""
    library = f"{LIBRARY}=={LIBRARY_VERSION}"
    pythons = tuple(p for p in ("3.11", "3.12") if PYTHONS[0] <= tuple(map(int, p.split("."))) <= PYTHONS[1])
    return PackageSet(
        f"NPU-library env ({library})",
        (TORCH, *REQUIREMENTS),
        read_constraints(CONSTRAINTS),
        no_deps=(library,),
        pythons=pythons,
        why_pythons=f"openvino 2024.4, which {LIBRARY} pins, has wheels for CPython 3.8-3.12",
    )
