"""trajdistill: agentic trajectory distillation."""

__version__ = "0.1.0"


def main() -> None:
    from ._app import run  # on call: `import trajdistill` (for __version__) must not load the CLI

    run()
