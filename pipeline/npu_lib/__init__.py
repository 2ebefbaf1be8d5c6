"""intel-npu-acceleration-library: its own venv (env), the worker that runs in it, export and validate."""
