"""intel-npu-acceleration-library family: its own venv (env), the worker that runs inside it, export and validate stages."""
