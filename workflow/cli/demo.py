"""Alias of ``make demo``: runs the CPU demo recipe (``tools/run_recipe.py configs/recipes/demo_cpu.yaml``).

Synthetic data -> prepare -> train the four CPU demo configs on fold 0 -> out-of-fold predictions -> each model
scored alone -> tuned ensemble with a held-out report -> test predictions -> submissions/demo.csv ->
``<work dir>/summary.md``. Finished steps are skipped on a second run. Every option of ``tools/run_recipe.py``
(``--work-dir``, ``--data-root``, ``--from``, ``--only``, ``--dry-run``, ...) is passed through; the recipe is
always configs/recipes/demo_cpu.yaml (no recipe argument).

Examples:
    python tools/demo.py                                   # = make demo, output under work_dirs/demo
    python tools/demo.py --dry-run                         # the plan
    python tools/demo.py --work-dir work_dirs/demo_docs    # another output folder
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Runs the demo recipe with ``argv`` passed through; returns the exit status."""
    from workflow.cli.run_recipe import main as run_recipe
    from workflow.recipe.config import REPO

    args = list(sys.argv[1:] if argv is None else argv)
    return run_recipe(
        args, fixed_recipe=str(REPO / "configs" / "recipes" / "demo_cpu.yaml"), description=__doc__
    )


if __name__ == "__main__":
    sys.exit(main())
