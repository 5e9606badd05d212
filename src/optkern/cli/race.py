"""``optkern race``: every optimizer on an ill-conditioned quadratic
(the library function is optkern.race.race)."""

from optkern.race import race
from optkern.cli._common import EXIT_OK, UsageError, _suggest


def cmd_race(args):
    import optkern

    if args.size < 1 or args.max_steps < 1 or not args.tol > 0:
        raise UsageError("--size and --max-steps must be >= 1 and --tol > 0")
    if args.backends:
        for be in args.backends:
            if be not in optkern.available_backends():
                raise UsageError(f"--backends: {be!r} is not available here; choose from "
                                 f"{', '.join(optkern.available_backends())}"
                                 f"{_suggest(be, optkern.available_backends())}")
    race(n=args.size, tol=args.tol, max_steps=args.max_steps, backends=args.backends,
         dtype=args.dtype)
    return EXIT_OK
