"""The NPU library family's own ``aipc`` command (registry field ``commands``: :mod:`pipeline.cli` lists it)."""

from __future__ import annotations

import json
from collections.abc import Callable

from pipeline.core.errors import fail


def cmd_npu_lib_env() -> None:
    """Create (first use) or show the isolated intel-npu-acceleration-library environment."""
    from pipeline.npu_lib import env as npu_lib_env

    try:
        env = npu_lib_env.ensure(retry=True)
    except npu_lib_env.EnvUnavailable as err:
        fail(f"the isolated environment cannot be built here: {err}")
    print(json.dumps({"path": str(env.path), "python": str(env.python), **env.info}, indent=2))


COMMANDS: dict[str, Callable[..., None]] = {"npu-lib-env": cmd_npu_lib_env}
