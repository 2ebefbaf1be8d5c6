"""``python -m pipeline.cli.dvc_main <dvc arguments>``: DVC itself, minus its ``git add`` hint after a run.

After a run that wrote ``dvc.lock`` or a ``.gitignore``, DVC prints "To track the changes with git, run: git add
..." and "To enable auto staging ...". That is advice for someone versioning their own experiments; after the
README's demo it reads like something went wrong (issue 33). DVC has no setting for it short of ``--quiet``,
which hides its errors too, or ``core.autostage``, which would stage files in the user's git index. So this runs
DVC's own entry point with a logging filter on the one logger that prints the hint; everything else, errors
included, is DVC's as usual.
"""

from __future__ import annotations

import logging
import sys

HINTS = ("To track the changes with git", "To enable auto staging")
SCM_LOGGER = "dvc.repo.scm_context"  # dvc/repo/scm_context.py: logger.getChild(__name__)


class NoGitHint(logging.Filter):
    """Drops the two hint records; passes every other record."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).lstrip().startswith(HINTS)


def main(argv: list[str]) -> int:
    """Run DVC's command line with ``argv``; its exit code."""
    from dvc.cli import main as dvc_main

    logging.getLogger(SCM_LOGGER).addFilter(NoGitHint())
    return int(dvc_main(argv))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
