"""``python -m pipeline.cli``: the ``aipc`` console script."""

from pipeline.cli import main

main()
