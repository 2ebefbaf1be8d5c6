"""What ``aipc stages`` (:mod:`pipeline.core.stage_deps`) cannot read from import statements: code run in another
process by its path, and the modules that import or launch code by a computed name. The core's are here; each
family keeps its own in its package (a :class:`FamilyDeps` named by its registry line's ``stage_deps``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DYNAMIC_SITES", "FamilyDeps", "family_deps"]


@dataclass(frozen=True)
class FamilyDeps:
    """A family's edges no import statement shows, in its package (its registry line's ``stage_deps``)."""

    launched: dict[str, tuple[str, ...]]  # file -> code it runs in another process by its path: the graph misses it
    sites: dict[str, str]  # file that imports or launches code by a computed name -> why (see DYNAMIC_SITES)


# Modules that import or launch project code by a name or path computed at run time (tests/core/test_stage_deps.py
# finds every such call): each is covered by a family's launched or edges(), or says why it needs no edge.
DYNAMIC_SITES: dict[str, str] = {
    "pipeline/core/registry.py": "family config, rounding, RAM, time modules: edges(); entry points: the stage's module",
    "pipeline/core/stage.py": "imports the stage's own command module (its __doc__)",
    "pipeline/cli/project.py": "runs DVC as python -m dvc or pipeline.cli.dvc_main (the CLI; no stage's code)",
    "pipeline/cli/convert.py": "runs DVC through project.run_dvc as pipeline.cli.dvc_main (the CLI; no stage's code)",
    "pipeline/core/stage_edges.py": "names these files; imports and runs nothing",
}


def family_deps() -> tuple[dict[str, tuple[str, ...]], dict[str, str]]:
    """Every family's launched files, and :data:`DYNAMIC_SITES` with each family's sites (registry ``stage_deps``)."""
    from pipeline.core.registry import entries

    deps = entries("stage_deps").values()
    return {k: v for d in deps for k, v in d.launched.items()}, {
        **DYNAMIC_SITES,
        **{k: v for d in deps for k, v in d.sites.items()},
    }
