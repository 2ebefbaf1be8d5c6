"""aipc-pipeline: convert Phi-3 checkpoints for Intel AI PCs and prove that the results run."""

__version__ = "0.1.0"
