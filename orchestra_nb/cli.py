"""The ``orchestra`` console script: :func:`runtime.cli.main` with the notebook side's plotter.

``orchestra bench --plot out.png`` draws with matplotlib, which only ``orchestra_nb``
may import; everything else is ``runtime.cli``.
"""
import sys


def main() -> None:
    """Entry point of the ``orchestra`` console script."""
    from orchestra_nb.bench import save_plot
    from runtime.cli import main as run
    sys.exit(run(plotter=save_plot))


if __name__ == '__main__':
    main()
