"""Family-independent validation: PyTorch reference, device matrix and verdicts, fidelity, metrics, report."""
