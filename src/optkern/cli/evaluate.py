"""``optkern evaluate``: a saved model's metrics on a labelled data file."""

from optkern.metrics import metrics
from optkern.cli._common import EXIT_OK, _check_labels, _load_model, _read_like_training


def cmd_evaluate(args):
    import json

    est, extra = _load_model(args.model)
    X, y, _ = _read_like_training(args.data, args, extra, est.n_features_in_)
    y = _check_labels(est, y, args.data)
    m = metrics(est, X, y)
    if args.json:
        print(json.dumps(m))
    else:
        for k, v in m.items():
            print(f"{k:10s} {v}" if k == "n_samples" else f"{k:10s} {v:.6f}")
    return EXIT_OK
