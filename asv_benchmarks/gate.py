"""Performance regression gate: compare two commits with asv, fail on a slowdown.

    python asv_benchmarks/gate.py [BASE] [HEAD] [--factor 1.10] [--bench REGEX]... [--quick]

BASE defaults to ``main``, HEAD to ``HEAD``; both may be any git revision.
The gate runs ``asv continuous --factor F BASE HEAD`` from this directory:
asv builds each commit into its own virtualenv (``pip wheel``, so the Cython
extensions are compiled by setup.py as for ``pip install .``; see
asv.conf.json), runs the selected benchmarks on both, prints the comparison
table (every benchmark, not only the changed ones) and this script exits

    0  no benchmark got slower than F times the base (within asv's statistics)
    1  at least one did ("PERFORMANCE DECREASED")
    2  the gate could not run (asv missing, unknown revision, asv error)

With no ``--bench`` the whole suite runs: hours on a 2-core machine.  Gate a
change with a regex naming the benchmarks it touches, e.g.
``--bench "UpdateStep.time_step\\('adam', 'numba', 100000\\)"``.  ``--quick``
runs each benchmark once (asv's ``--quick``): it proves the gate and the
benchmarks work, the ratios it prints are single samples.

The first run on a machine records it with ``asv machine --yes`` and builds
the virtualenv (downloads numpy, numba, scipy, scikit-learn): minutes.
"""

import argparse
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
EXIT_OK, EXIT_SLOWER, EXIT_ERROR = 0, 1, 2


def _asv_command():
    """How to invoke asv: the ``asv`` script beside this Python, on PATH, or -m."""
    beside = os.path.join(os.path.dirname(sys.executable), "asv")
    if os.path.exists(beside):
        return [beside]
    found = shutil.which("asv")
    if found:
        return [found]
    try:
        import asv  # noqa: F401
    except ImportError:
        return None
    return [sys.executable, "-m", "asv"]


def _machine_file():
    return os.environ.get("ASV_MACHINE_FILE") or os.path.expanduser("~/.asv-machine.json")


def _rev_parse(rev):
    proc = subprocess.run(["git", "rev-parse", "--verify", "--quiet", rev + "^{commit}"],
                          cwd=HERE, capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def build_command(asv, base, head, factor, benches, quick, extra=()):
    cmd = [*asv, "continuous", "--factor", repr(float(factor)), "--show-stderr",
           "--no-only-changed", "--sort", "ratio"]
    for regex in benches:
        cmd += ["--bench", regex]
    if quick:
        cmd.append("--quick")
    cmd += list(extra)
    cmd += [base, head]
    return cmd


# Lines of asv's output about parameter combinations --bench did not select:
# a comparison row with no result on either side, or a row of a benchmark's
# parameter table whose result is n/a.
_NOT_RUN = re.compile(r"^\|\s*\|\s*n/a\s*\|\s*n/a\s*\||^(\[[ \d.]+%\])?\s{10,}.*\sn/a\s*$")


def not_run(line):
    """True for a line of asv output about a benchmark that did not run."""
    return bool(_NOT_RUN.match(line.rstrip("\n")))


def verdict(output, returncode):
    """Exit status of the gate from asv continuous's output and status."""
    if "PERFORMANCE DECREASED" in output:
        return EXIT_SLOWER
    if returncode != 0:
        # asv's own errors (build failure, no benchmarks matched, ...)
        return EXIT_ERROR
    return EXIT_OK


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python asv_benchmarks/gate.py",
        description="Run asv continuous between BASE and HEAD and exit non-zero on a "
                    "slowdown beyond --factor.",
        epilog="Exit status: 0 no regression, 1 slower beyond the factor, 2 could not run.")
    p.add_argument("base", nargs="?", default="main", help="base revision (default: main)")
    p.add_argument("head", nargs="?", default="HEAD", help="revision tested (default: HEAD)")
    p.add_argument("--factor", type=float, default=1.10,
                   help="slowdown factor that fails the gate (default: 1.10)")
    p.add_argument("--bench", "-b", action="append", default=[], metavar="REGEX",
                   help="benchmarks to run (repeatable; default: all)")
    p.add_argument("--quick", action="store_true",
                   help="each benchmark once (asv --quick): checks that it runs")
    p.add_argument("--asv-arg", action="append", default=[], metavar="ARG",
                   help="extra argument passed to asv continuous (repeatable), e.g. "
                        "--asv-arg=--interleave-rounds")
    p.add_argument("--all-lines", action="store_true",
                   help="also print asv's n/a lines for benchmarks --bench did not select")
    p.add_argument("--dry-run", action="store_true", help="print the asv command only")
    args = p.parse_args(argv)
    if not args.factor > 1.0:
        p.error("--factor must be > 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    asv = _asv_command()
    if asv is None:
        print("gate: asv is not installed; pip install 'optkern[bench]' (or pip install asv)",
              file=sys.stderr)
        return EXIT_ERROR
    revs = {}
    for name in (args.base, args.head):
        sha = _rev_parse(name)
        if sha is None:
            print(f"gate: unknown git revision {name!r}", file=sys.stderr)
            return EXIT_ERROR
        revs[name] = sha
    cmd = build_command(asv, revs[args.base], revs[args.head], args.factor, args.bench,
                        args.quick, args.asv_arg)
    print("gate: " + " ".join(cmd), flush=True)
    if args.dry_run:
        return EXIT_OK
    if not os.path.exists(_machine_file()):
        print("gate: no asv machine file; running asv machine --yes", flush=True)
        subprocess.run([*asv, "machine", "--yes"], cwd=HERE, check=False,
                       stdout=subprocess.DEVNULL)
    start = time.perf_counter()
    lines = []
    with subprocess.Popen(cmd, cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, bufsize=1) as proc:
        hidden = 0
        for line in proc.stdout:
            lines.append(line)
            if not args.all_lines and not_run(line):
                hidden += 1
                continue
            sys.stdout.write(line)
            sys.stdout.flush()
    if hidden:
        print(f"gate: {hidden} lines about parameter combinations that were not selected "
              "hidden (--all-lines shows them)")
    output = "".join(lines)
    status = verdict(output, proc.returncode)
    minutes = (time.perf_counter() - start) / 60
    base, head = args.base, args.head
    if status == EXIT_SLOWER:
        n = len(re.findall(r"^\|\s*\+\s*\|", output, flags=re.M))
        print(f"gate: FAIL: {n or 'some'} benchmark(s) slower than {args.factor:g}x "
              f"between {base} and {head} ({minutes:.1f} min)")
    elif status == EXIT_ERROR:
        print(f"gate: ERROR: asv continuous exited with status {proc.returncode} "
              f"({minutes:.1f} min)", file=sys.stderr)
    else:
        print(f"gate: OK: no benchmark slower than {args.factor:g}x between {base} and "
              f"{head} ({minutes:.1f} min)")
    return status


if __name__ == "__main__":
    sys.exit(main())
