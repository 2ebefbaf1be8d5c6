"""Family-independent validation: the PyTorch reference, the device matrix and verdicts, fidelity, metrics files, the report."""
