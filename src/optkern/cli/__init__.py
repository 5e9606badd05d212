"""The ``optkern`` command line.

Subcommands: demo, train, predict, evaluate, trajectories, lr-sweep,
make-data, race, bench; each is one module of this package (``train.py``
holds ``cmd_train``, ...), ``_parser.py`` builds the arguments and runs
``main``, ``_common.py`` holds what they share.  The library logic they call
lives in the library (``optkern.race``, ``optkern.metrics``,
``optkern.bench``).  ``docs/cli.md`` documents the commands with examples.

Errors the user can fix are reported as one line ``optkern CMD: error: ...``
on stderr, without a traceback, and the exit status says what kind:

* 2, usage: a bad option value, an unknown optimizer/loss/backend/function
  name (the message lists the valid names and suggests the closest), a
  missing input file, an output directory that does not exist, a plot
  option without matplotlib installed;
* 1, data: a malformed data file (the message names the file and line), a
  model file that is corrupt, of another kind or from a newer optkern, test
  labels never seen in training, training that diverges.

Every file is written to a temporary file beside its destination and renamed
over it at the end, so a failed command never leaves a half-written file or
overwrites an existing one.
"""

from optkern.cli._common import (CLASSIFIER_LOSSES, EXIT_DATA, EXIT_INTERRUPTED, EXIT_OK,
                                 EXIT_TERMINATED, EXIT_USAGE, OPTIMIZER_NAMES,
                                 REGRESSOR_LOSSES, SCHEDULE_NAMES, CLIError, DataError,
                                 Terminated, UsageError, format_label,
                                 unknown_name_message)
from optkern.cli._parser import build_parser, main
from optkern.race import race

__all__ = ["CLASSIFIER_LOSSES", "EXIT_DATA", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_TERMINATED",
           "EXIT_USAGE", "OPTIMIZER_NAMES", "REGRESSOR_LOSSES", "SCHEDULE_NAMES", "CLIError",
           "DataError", "Terminated", "UsageError", "build_parser", "format_label", "main",
           "race", "unknown_name_message"]
