"""``optkern make-data``: one of scikit-learn's bundled data sets as svmlight files."""

from optkern.cli._common import EXIT_OK, UsageError, _check_output, _refuse_overwriting_inputs


MAKE_DATA_SETS = ("digits", "iris", "wine", "breast_cancer", "diabetes")


def cmd_make_data(args):
    """Write one of scikit-learn's bundled data sets, split, as svmlight files."""
    from sklearn import datasets
    from sklearn.datasets import dump_svmlight_file
    from sklearn.model_selection import train_test_split

    from optkern.io import atomic_write

    outputs = [("TRAIN", args.train)] + ([("TEST", args.test)] if args.test else [])
    for option, path in outputs:
        _check_output(path, option)
    _refuse_overwriting_inputs(outputs, [])
    if args.test is None and args.test_fraction != 0.25:
        raise UsageError("--test-fraction needs a TEST file")
    X, y = getattr(datasets, f"load_{args.name}")(return_X_y=True)
    parts = [(args.train, X, y)]
    if args.test:
        regression = args.name == "diabetes"
        Xtr, Xte, ytr, yte = train_test_split(
            X, y, test_size=args.test_fraction, random_state=args.seed,
            stratify=None if regression else y)
        parts = [(args.train, Xtr, ytr), (args.test, Xte, yte)]
    for path, Xp, yp in parts:
        # one-based indices (the libsvm convention), so that --zero-based auto
        # reads digits' all-zero column 0 right; the shape goes in the comment
        with atomic_write(path) as fh:
            dump_svmlight_file(Xp, yp, fh, zero_based=False,
                               comment=f"{args.name}: {Xp.shape[0]} samples x "
                                       f"{Xp.shape[1]} features")
        print(f"{path}: {Xp.shape[0]} samples x {Xp.shape[1]} features ({args.name})")
    return EXIT_OK
