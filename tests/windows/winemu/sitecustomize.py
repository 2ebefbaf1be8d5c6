"""Loaded by every Python process started with this folder first on PYTHONPATH: Windows semantics if AIPC_WINEMU=1.

See ``_aipc_winemu`` for what is emulated and ``winemu.winemu_env`` for the environment that switches it on.
"""

import os

if os.environ.get("AIPC_WINEMU") == "1":
    import _aipc_winemu

    _aipc_winemu.install()
