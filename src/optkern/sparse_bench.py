"""The sparse race of ``optkern bench`` and the text-like data it runs on.

``text_like(n, n_features, n_classes, nnz=45, seed=0)`` makes a problem
shaped like bag-of-words text: each row holds about ``nnz`` distinct
features drawn with Zipf frequencies (exponent 1.1, feature ids shuffled so
frequent features are spread over the index space, as hashing spreads
them), term counts damped by log1p and the rows l2-normalised; labels are
drawn from a softmax over the scores of a dense random model (every feature
carries signal, so a good fit needs the rare features too).

``race(...)`` fits, on the same train/test split: optkern's estimator with
its defaults, scikit-learn's ``SGDClassifier(loss="log_loss")`` and
``LogisticRegression()``, and, where they install, LIBLINEAR
(``liblinear-multicore``, ``-s 0 -n 2``), Vowpal Wabbit (``vowpalwabbit``, 5
passes of logistic or one-against-all, its text parsing included) and Snap ML
(``snapml.LogisticRegression(n_jobs=2)``); a peer that does not import is a
row with a note.  Each fit is timed alone, the contenders interleaved
(median of ``repeats``), and scored on the held-out rows.
"""

import statistics
import time
import warnings

import numpy as np
import scipy.sparse as sp


def text_like(n, n_features, n_classes, nnz=45, seed=0, dtype=np.float64,
              zipf=1.1, temperature=None):
    """(X CSR, y) of the text-like problem (module docstring)."""
    rng = np.random.default_rng(seed)
    ranks = np.arange(1, n_features + 1, dtype=np.float64)
    p = ranks ** -zipf
    p /= p.sum()
    perm = rng.permutation(n_features)
    lengths = np.maximum(1, rng.poisson(nnz, size=n))
    total = int(lengths.sum())
    cols = perm[np.searchsorted(np.cumsum(p), rng.random(total), side="right")
                .clip(0, n_features - 1)]
    rows = np.repeat(np.arange(n), lengths)
    X = sp.csr_matrix((np.ones(total), (rows, cols)), shape=(n, n_features))
    X.sum_duplicates()                      # counts of repeated terms
    X.data = np.log1p(X.data)
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())
    X = sp.diags(1.0 / np.maximum(norms, 1e-12)) @ X
    X = sp.csr_matrix(X, dtype=dtype)
    X.sort_indices()
    k = 1 if n_classes == 2 else n_classes
    W = rng.standard_normal((n_features, k))
    scores = np.asarray(X @ W)
    if temperature is None:
        temperature = 1.0
    scores = scores / temperature
    if n_classes == 2:
        prob = 1.0 / (1.0 + np.exp(-scores[:, 0]))
        y = (rng.random(n) < prob).astype(np.int64)
    else:
        g = rng.gumbel(size=scores.shape)
        y = np.argmax(scores + g, axis=1)
    return X, y


def split(X, y, test_fraction=0.2, seed=0):
    rng = np.random.default_rng(seed + 1)
    idx = rng.permutation(X.shape[0])
    m = int(X.shape[0] * (1 - test_fraction))
    tr, te = idx[:m], idx[m:]
    return X[tr], y[tr], X[te], y[te]


def _sklearn(est_factory):
    def fit(Xtr, ytr):
        m = est_factory()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m.fit(Xtr, ytr)
        return m.predict
    return fit


def _liblinear():
    try:
        from liblinear import liblinearutil as ll
    except ImportError:
        return None, "liblinear-multicore is not installed (pip install liblinear-multicore)"

    def fit(Xtr, ytr):
        model = ll.train(ytr.astype(np.float64), Xtr, "-s 0 -n 2 -q")

        def predict(X):
            labels, _, _ = ll.predict(np.zeros(X.shape[0]), X, model, "-q")
            return np.asarray(labels, dtype=np.int64)
        return predict
    return fit, None


def _vw_lines(X, y, n_classes):
    out = []
    indptr, indices, data = X.indptr, X.indices, X.data
    for i in range(X.shape[0]):
        lab = (1 if y[i] == 1 else -1) if n_classes == 2 else int(y[i]) + 1
        feats = " ".join(f"{indices[q]}:{data[q]:.6g}"
                         for q in range(indptr[i], indptr[i + 1]))
        out.append(f"{lab} | {feats}")
    return out


def _vowpal(n_classes, bits):
    try:
        import vowpalwabbit
    except ImportError:
        return None, "vowpalwabbit is not installed (pip install vowpalwabbit)"

    def fit(Xtr, ytr):
        import os
        import tempfile

        args = f"--loss_function logistic -b {bits} --passes 5 --holdout_off --quiet -c -k"
        if n_classes > 2:
            args += f" --oaa {n_classes}"
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "train.vw")
            with open(path, "w") as fh:     # the text it parses: timed, as in the issue
                fh.write("\n".join(_vw_lines(Xtr, ytr, n_classes)) + "\n")
            ws = vowpalwabbit.Workspace(f"{args} -d {path} --cache_file {path}.cache")

        def predict(X):
            lines = _vw_lines(X, np.zeros(X.shape[0], np.int64), n_classes)
            pred = np.array([ws.predict(line) for line in lines], dtype=np.float64)
            if n_classes == 2:
                return (pred > 0).astype(np.int64)
            return pred.astype(np.int64) - 1
        return predict
    return fit, None


def _snapml(n_classes):
    try:
        import snapml
    except ImportError:
        return None, "snapml is not installed (pip install snapml)"

    def fit(Xtr, ytr):
        m = snapml.LogisticRegression(n_jobs=2)
        m.fit(Xtr, ytr)
        return m.predict
    return fit, None


def contenders(n_classes, n_features, optkern_params=None, extra_optkern=()):
    """(name, kind, fit or None, note) for the race.  ``extra_optkern``: more
    optkern rows, each a dict of LinearClassifier parameters."""
    from sklearn.linear_model import LogisticRegression, SGDClassifier

    import optkern

    params = dict(optkern_params or {})
    rows = [
        ("optkern LinearClassifier() defaults", "optkern",
         _sklearn(lambda: optkern.LinearClassifier(random_state=0, **params)), ""),
    ]
    for extra in extra_optkern:
        label = ", ".join(f"{k}={v!r}" for k, v in extra.items())
        rows.append((f"optkern LinearClassifier({label})", "optkern",
                     _sklearn(lambda extra=extra: optkern.LinearClassifier(
                         random_state=0, **{**params, **extra})), ""))
    rows += [
        ("scikit-learn SGDClassifier(loss='log_loss')", "peer",
         _sklearn(lambda: SGDClassifier(loss="log_loss", random_state=0)), ""),
        ("scikit-learn LogisticRegression()", "peer",
         _sklearn(lambda: LogisticRegression()), ""),
    ]
    bits = max(18, int(np.ceil(np.log2(max(n_features, 2)))))
    for name, (fit, note) in (("LIBLINEAR -s 0 -n 2", _liblinear()),
                              ("Vowpal Wabbit, 5 passes (text parsing included)",
                               _vowpal(n_classes, bits)),
                              ("Snap ML LogisticRegression(n_jobs=2)", _snapml(n_classes))):
        rows.append((name, "peer", fit, note or ""))
    return rows


def race(n, n_features, n_classes, repeats=1, seed=0, optkern_params=None, skip=(),
         extra_optkern=(), once=()):
    """[(name, kind, median_s, best_s, accuracy, note)] on one text-like problem.

    The contenders are interleaved: each repeat fits every contender once, in
    turn, so a change of the machine's load hits all of them alike.  Names
    containing a string of ``once`` are fitted in the first repeat only (the
    slow references)."""
    import optkern

    X, y = text_like(n, n_features, n_classes, seed=seed)
    Xtr, ytr, Xte, yte = split(X, y, seed=seed)
    m = min(200, Xtr.shape[0])
    from optkern import _jit

    with warnings.catch_warnings():     # compile or load the epoch before timing
        warnings.simplefilter("ignore")
        for rnd in range(2):
            for extra in ({},) + tuple(extra_optkern):
                optkern.LinearClassifier(**{**dict(optkern_params or {}), **extra,
                                            "max_epochs": 1}).fit(Xtr[:m], ytr[:m])
            # on a cold cache the first calls run the Cython twins while Numba
            # compiles in the background: wait for it, then load the compiled
            # kernels, so that the timed fits run them (the first process on a
            # cold cache timed the 2-class default at 0.41 s against 0.24 s)
            if rnd == 0:
                _jit.wait(900)
    rows = contenders(n_classes, n_features, optkern_params, extra_optkern)
    times = [[] for _ in rows]
    acc = [None] * len(rows)
    for rep in range(repeats):
        for j, (name, kind, fit, note) in enumerate(rows):
            if fit is None or any(s in name for s in skip) or \
                    (rep > 0 and any(s in name for s in once)):
                continue
            t0 = time.perf_counter()
            predict = fit(Xtr, ytr)
            times[j].append(time.perf_counter() - t0)
            acc[j] = float(np.mean(predict(Xte) == yte))
    out = []
    for j, (name, kind, fit, note) in enumerate(rows):
        if not times[j]:
            out.append((name, kind, None, None, None, note or "skipped"))
        else:
            out.append((name, kind, statistics.median(times[j]), min(times[j]), acc[j], note))
    return out
