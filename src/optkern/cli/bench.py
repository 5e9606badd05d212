"""``optkern bench``: optkern side by side with its peers (optkern.bench)."""

from optkern.cli._common import _refuse_overwriting_inputs


def cmd_bench(args):
    """optkern side by side with NumPy, PyTorch and scikit-learn (optkern.bench)."""
    from optkern import bench

    _refuse_overwriting_inputs([("--plot", getattr(args, "plot", None)),
                                ("--json", getattr(args, "json", None))], [])
    return bench.run(args)
