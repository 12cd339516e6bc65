"""The command-line entry points of the stack: ``python -m workflow.cli.<tool>``; ``tools/<tool>.py`` runs the
same ``main``.

Every module here holds one tool's argparse options and ``main(argv: list[str] | None = None) -> int`` (the exit
status: 0 done, 1 a failed run or bad data, 2 bad arguments or input, as each tool documents) and runs it under
``if __name__ == "__main__"``. The recipe plan (:mod:`workflow.recipe.plan`) runs these modules, never a script
path. The logic lives in the library below (``custom_modules``, ``ensemble``, ``celldata``) and in ``workflow``.
"""
