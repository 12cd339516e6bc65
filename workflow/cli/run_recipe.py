"""Run a recipe: the whole competition pipeline as one resumable command (configs/recipes/README.md).

prepare -> (LIVECell pretraining) -> train every model x fold -> out-of-fold predictions -> each model scored
alone -> tune the ensemble on the out-of-fold predictions (held-out report) -> test predictions -> submission
-> (Kaggle bundle) -> summary.md / summary.json + plots in the work dir. Finished steps are skipped (stamps with
their inputs' fingerprint); an interrupted training resumes from its last checkpoint.

Examples:
    python tools/run_recipe.py configs/recipes/demo_cpu.yaml                       # = make demo
    python tools/run_recipe.py configs/recipes/demo_cpu.yaml --dry-run             # the plan, states, commands
    python tools/run_recipe.py configs/recipes/demo_cpu.yaml \\
        --data-root work_dirs/real_copy --work-dir work_dirs/demo_real             # same recipe, real images
    python tools/run_recipe.py configs/recipes/sartorius_gpu.yaml --data-root data/sartorius
    python tools/run_recipe.py RECIPE --from tune                                  # redo tuning and what follows
    python tools/run_recipe.py RECIPE --only train/yolox                           # just these steps
"""

from __future__ import annotations

import argparse
import sys


def parse_args(
    argv: list[str] | None = None, recipe: str | None = None, description: str | None = None
) -> argparse.Namespace:
    """Command-line arguments.

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).
        recipe: A fixed recipe (``tools/demo.py``): no ``recipe`` positional then.
        description: The help text's description (default: this module's docstring).

    Returns:
        The parsed arguments, ``recipe`` included.
    """
    p = argparse.ArgumentParser(
        description=description or __doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if recipe is None:
        p.add_argument("recipe", help="recipe YAML (configs/recipes/*.yaml)")
    p.add_argument(
        "--data-root", help="Kaggle-layout data root (train.csv, train/, test/) instead of the recipe's"
    )
    p.add_argument("--work-dir", help="output folder (default: the recipe's work_dir)")
    p.add_argument(
        "--only",
        nargs="+",
        metavar="STEP",
        help="run only these stages or step ids (e.g. train, train/yolox/fold0)",
    )
    p.add_argument(
        "--from", dest="from_step", metavar="STEP", help="redo this stage or step and all after it"
    )
    p.add_argument("--dry-run", action="store_true", help="print the plan (state and command of every step)")
    p.add_argument("--verbose", action="store_true", help="echo every step's full output (always in logs/)")
    p.add_argument(
        "--keep-going", action="store_true", help="after a failure, run the steps that do not need it"
    )
    p.add_argument(
        "--smoke",
        action="store_true",
        help="smoke run: every step with the recipe's configs on a few images, 2 training iterations per model, "
        "in <work_dir>_smoke; reports each step's time and peak memory (configs/recipes/README.md)",
    )
    args = p.parse_args(argv)
    if recipe is not None:
        args.recipe = recipe
    return args


def main(
    argv: list[str] | None = None, fixed_recipe: str | None = None, description: str | None = None
) -> int:
    """Entry point; returns the exit status (0 ok, 1 a step failed, 2 invalid recipe or arguments).

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).
        fixed_recipe: Run this recipe; the command line then has no ``recipe`` positional (``tools/demo.py``).
        description: The help text's description (with ``fixed_recipe``).
    """
    args = parse_args(argv, fixed_recipe, description)
    import signal

    def _terminate(signum: int, frame: object) -> None:
        # a plain `kill` stops the running tool too (its checkpoints stay)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _terminate)
    from celldata.fileio import check_output_path
    from workflow.recipe.config import load_recipe
    from workflow.recipe.plan import build_plan
    from workflow.recipe.runner import run_plan

    try:
        recipe = load_recipe(args.recipe)
        if getattr(args, "smoke", False):
            return _smoke(recipe, args)
        plan = build_plan(recipe, work_dir=args.work_dir, data_root=args.data_root)
        check_output_path(plan.work_dir, "dir", "--work-dir" if args.work_dir else "work_dir (recipe)")
        synthetic = args.data_root is None and recipe.data.root is None
        if not synthetic and not (plan.data_root / "train.csv").is_file():
            where = f"--data-root {args.data_root}" if args.data_root else f"data.root {plan.data_root}"
            raise ValueError(f"{where}: no train.csv (Kaggle layout expected; --data-root names another)")
        result = run_plan(
            plan,
            only=args.only,
            from_step=args.from_step,
            dry_run=args.dry_run,
            verbose=args.verbose,
            keep_going=args.keep_going,
        )
    except ValueError as e:
        print(f"run_recipe.py: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"run_recipe.py: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            "run_recipe.py: interrupted; run it again to resume (finished steps are skipped)", file=sys.stderr
        )
        return 130
    if args.dry_run:
        return 0
    if result["failed"]:
        print(
            f"run_recipe.py: {len(result['failed'])} step(s) failed: {', '.join(result['failed'])}",
            file=sys.stderr,
        )
        return 1
    summary = plan.work_dir / "summary.md"
    print(f"ran {len(result['ran'])} step(s), skipped {len(result['skipped'])} finished; summary: {summary}")
    if summary.is_file() and "summary" in result["ran"]:
        print(summary.read_text())
    return 0


def _smoke(recipe: object, args: argparse.Namespace) -> int:
    """``--smoke``: build the smoke plan, run every step (failures do not stop it), print the report.

    Returns:
        0 when every step ran, 1 when any failed (the report lists them).

    Raises:
        ValueError: For ``--only`` / ``--from`` (a smoke run runs everything) or a data root without
            ``train.csv``.
    """
    from workflow.recipe.runner import run_plan
    from workflow.recipe.smoke import build_smoke_plan, format_report, run_smoke

    if args.only or args.from_step:
        raise ValueError("--smoke runs every step; --only / --from do not apply")
    sp = build_smoke_plan(recipe, work_dir=args.work_dir, data_root=args.data_root)  # type: ignore[arg-type]
    if args.dry_run:
        run_plan(sp.plan, dry_run=True)
        print("GPU-only values adapted:\n" + "\n".join(f"  {a}" for a in sp.adaptations or ["(none)"]))
        return 0
    report = run_smoke(sp, verbose=args.verbose)
    print(format_report(report))
    print(f"smoke report: {sp.plan.work_dir / 'smoke_report.md'}")
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
