"""``python -m optkern`` / ``optkern``: the command line (implemented in optkern.cli).

Subcommands: demo, train, predict, evaluate, trajectories, lr-sweep, race,
bench; ``optkern COMMAND --help`` for each, docs/cli.md for examples.
"""

import sys

from optkern.cli import main, race  # noqa: F401  (race: kept importable from here)

if __name__ == "__main__":
    sys.exit(main())
