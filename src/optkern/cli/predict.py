"""``optkern predict``: a saved model's predictions for a data file."""

import sys

from optkern.metrics import has_proba
from optkern.cli._common import (DataError, EXIT_OK, UsageError, _check_output, _csv_row,
                                 _err, _load_model, _read_like_training,
                                 _refuse_overwriting_inputs, format_label)


def cmd_predict(args):
    from optkern import io

    _check_output(args.output, "-o/--output")
    _refuse_overwriting_inputs([("-o/--output", args.output)],
                               [("model file", args.model), ("data file", args.data)])
    est, extra = _load_model(args.model)
    if args.proba and not has_proba(est):
        kind = f"loss={est.loss!r}" if hasattr(est, "loss") else type(est).__name__
        raise UsageError(f"--proba: this model ({type(est).__name__}, {kind}) gives no "
                         "probabilities; train with loss softmax, log or modified_huber")
    X, _, _ = _read_like_training(args.data, args, extra, est.n_features_in_)
    if args.proba:
        proba = est.predict_proba(X)
        lines = [_csv_row(format_label(c) for c in est.classes_)]
        lines += [",".join(repr(float(p)) for p in row) for row in proba]
    else:
        pred = est.predict(X)
        if pred.ndim == 2:
            lines = [",".join(format_label(v) for v in row) for row in pred]
        else:
            lines = [format_label(v) for v in pred]
    text = "\n".join(lines) + "\n"
    if args.output:
        try:
            with io.atomic_write(args.output, "w") as fh:
                fh.write(text)
        except OSError as exc:
            raise DataError(f"cannot write {args.output}: {exc.strerror or exc}; "
                            f"{args.output} was not changed") from None
        _err(f"{len(lines) - bool(args.proba)} predictions written to {args.output}")
    else:
        sys.stdout.write(text)
    return EXIT_OK
