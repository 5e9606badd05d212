"""From the user's data to shards resident on the workers (client side).

A fit reads its input once into partitions (one per dask block, DataFrame
partition or data file), checks what every partition reports (shapes,
dtypes, finiteness, labels and their counts) and then concatenates
contiguous runs of partitions into one *shard* per worker, placed on the
worker that already holds most of its bytes.  The shards stay in the
workers' memory for the whole fit; every solver step is one task per shard,
and the client only ever holds the model.  A shard lost with its worker is
recomputed by Dask from its lineage (the partitions' tasks).
"""

import os
import numbers

import numpy as np

from optkern.dask import _worker

__all__ = ["DataFiles", "Dataset", "prepare"]


class DataFiles:
    """Data files (svmlight, CSV, npz shards) that the workers read themselves,
    one partition per file, with ``optkern.io.load_data``'s options.

    ``fit(DataFiles(paths, label_column=0))``; a plain list of paths is the
    same with the default options.  Every worker must see the paths (a
    shared file system, or the same files on every machine).
    """

    def __init__(self, paths, *, fmt=None, label_column=None, delimiter=None,
                 n_features=None, zero_based="auto", dtype=np.float64):
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths = [os.fspath(p) for p in paths]
        if not self.paths:
            raise ValueError("DataFiles needs at least one path")
        self.options = {"fmt": fmt, "label_column": label_column, "delimiter": delimiter,
                        "n_features": n_features, "zero_based": zero_based, "dtype": dtype}

    def __repr__(self):
        return f"DataFiles({len(self.paths)} files: {self.paths[:3]}{'...' if len(self.paths) > 3 else ''})"


def as_files(X):
    """A DataFiles for a list of paths, the DataFiles itself, else None."""
    if isinstance(X, DataFiles):
        return X
    if isinstance(X, (list, tuple)) and X and all(isinstance(p, (str, os.PathLike)) for p in X):
        return DataFiles(X)
    return None


class Dataset:
    """What the solvers need: the shard futures and what was checked."""

    def __init__(self, **kw):
        self.__dict__.update(kw)


def _is_dask_array(a):
    import dask.array as da

    return isinstance(a, da.Array)


def _is_dask_frame(a):
    try:
        import dask.dataframe as dd
    except ImportError:
        return False
    return isinstance(a, (dd.DataFrame, dd.Series))


def _in_memory_error(X):
    return TypeError(
        f"X is an in-memory {type(X).__name__}: optkern.dask trains on data the workers "
        "hold: a dask array (da.from_array(X, chunks=...)), a dask DataFrame, or a list of "
        "data files; for in-memory data use optkern.LinearClassifier/LinearRegressor")


def _blocks(client, X, y, sw):
    """Delayed (X, y, sw) blocks of a dask array or DataFrame input."""
    import dask

    if _is_dask_frame(X):
        if not hasattr(X, "columns"):
            raise TypeError("X is a dask Series; pass a dask DataFrame of features")
        names = [str(c) for c in X.columns]
        xs = X.to_delayed()
    elif _is_dask_array(X):
        names = None
        if X.ndim != 2:
            raise ValueError(f"X must be a 2-D dask array, got {X.ndim}-D")
        if X.numblocks[1] > 1:
            X = X.rechunk({1: -1})   # a block must hold whole rows
        xs = list(X.to_delayed()[:, 0])
    else:
        raise _in_memory_error(X)
    nb = len(xs)
    out = {"X": xs}
    for name, v in (("y", y), ("sample_weight", sw)):
        if v is None:
            out[name] = [None] * nb
            continue
        if _is_dask_frame(v):
            vs = v.to_delayed()
        elif _is_dask_array(v):
            if _is_dask_array(X) and v.shape[0] == X.shape[0] and \
                    not any(np.isnan(X.chunks[0])) and not any(np.isnan(v.chunks[0])) \
                    and v.chunks[0] != X.chunks[0]:
                v = v.rechunk({0: X.chunks[0]})
            if v.ndim == 2 and v.numblocks[1] > 1:
                v = v.rechunk({1: -1})
            vs = list(v.to_delayed().reshape(v.numblocks[0], -1)[:, 0])
        elif isinstance(v, (np.ndarray, list)) or hasattr(v, "__array__"):
            raise TypeError(f"{name} is in memory while X is a dask collection: pass {name} "
                            "as a dask array or Series with X's partitions")
        else:
            raise TypeError(f"{name} must be a dask array or Series, got {type(v).__name__}")
        if len(vs) != nb:
            raise ValueError(f"mismatched partitions: X has {nb} partitions, {name} has "
                             f"{len(vs)}; give them the same partitions (row chunks)")
        out[name] = vs
    make = dask.delayed(_worker.make_part, pure=True)
    parts = [make(xb, yb, wb, f"partition {i}")
             for i, (xb, yb, wb) in enumerate(zip(out["X"], out["y"], out["sample_weight"]))]
    return client.compute(parts), names, [None] * nb


def _files(client, files, y, sw):
    if y is not None or sw is not None:
        raise ValueError("with data files the labels come from the files: pass y=None "
                         "(and sample_weight=None)")
    futures = [client.submit(_worker.read_file, p, files.options, f"file {p}", pure=False)
               for p in files.paths]
    parts = [client.submit(_first, f, pure=False) for f in futures]
    infos = [client.submit(_second, f, pure=False) for f in futures]
    return parts, None, infos


def _first(pair):
    return pair[0]


def _second(pair):
    return pair[1]


def prepare(client, X, y, sample_weight, classify, classes=None):
    """Read and check the input; returns a Dataset with one shard per worker
    (fewer when there are fewer non-empty partitions).  Raises before any
    training when partitions disagree."""
    files = as_files(X)
    if files is not None:
        parts, names, infos = _files(client, files, y, sample_weight)
    else:
        if y is None:
            raise ValueError("y is required (labels or targets as a dask array or Series)")
        parts, names, infos = _blocks(client, X, y, sample_weight)
    metas = client.gather(client.map(_worker.part_meta, parts, classify=classify, pure=False))
    infos = client.gather([i for i in infos if i is not None]) if files is not None else infos
    ds = _check(metas, classify, files, infos, classes)
    ds.feature_names = names
    ds.parts, ds.metas = parts, metas
    return ds


def _fail(msg):
    raise ValueError(msg)


def _check(metas, classify, files, infos, classes):
    for m in metas:
        if m["y_n"] is not None and m["y_n"] != m["n"]:
            _fail(f"mismatched partitions: {m['source']} has {m['n']} rows in X and "
                  f"{m['y_n']} in y")
        if m["sw_n"] is not None and m["sw_n"] != m["n"]:
            _fail(f"mismatched partitions: {m['source']} has {m['n']} rows in X and "
                  f"{m['sw_n']} in sample_weight")
        if m["problem"]:
            _fail(f"{m['source']}: {m['problem']}")
    full = [m for m in metas if m["n"] > 0]
    if not full:
        _fail(f"all {len(metas)} partitions are empty: nothing to train on")
    dtypes = sorted({m["dtype"] for m in full})
    if len(dtypes) > 1:
        by = {dt: next(m["source"] for m in full if m["dtype"] == dt) for dt in dtypes}
        _fail("partitions have different dtypes (" + ", ".join(f"{s}: {dt}" for dt, s in
                                                               by.items())
              + "): cast X to one dtype (float32 or float64)")
    if len({m["sparse"] for m in full}) > 1:
        _fail("some partitions are sparse and some dense: use one kind")
    widths = sorted({m["d"] for m in full})
    d = widths[-1]
    svmlight = files is not None and files.options["n_features"] is None and \
        all(i.get("format") == "svmlight" for i in infos)
    if len(widths) > 1 and not svmlight:
        a = full[0]
        b = next(m for m in full if m["d"] != a["d"])
        _fail(f"partitions have different feature counts: {a['source']} has {a['d']}, "
              f"{b['source']} has {b['d']}")
    if files is not None:
        bases = {str(i.get("zero_based")) for i in infos if i.get("format") == "svmlight"}
        if len(bases) > 1:
            _fail("the svmlight files disagree on their index base (some 0-based, some "
                  "1-based as detected): pass zero_based=True or False to DataFiles")
    y_cols = {m["y_cols"] for m in full}
    if len(y_cols) > 1:
        _fail(f"partitions have y with different numbers of outputs: {sorted(y_cols, key=str)}")
    ds = Dataset(n=sum(m["n"] for m in full), d=int(d), dtype=np.dtype(dtypes[0]),
                 sparse=full[0]["sparse"], nnz=sum(m["nnz"] for m in full),
                 y_cols=y_cols.pop(), classes=None, counts=None,
                 n_partitions=len(metas), n_empty=len(metas) - len(full))
    if classify:
        labels = np.unique(np.concatenate([m["labels"] for m in full]))
        counts = np.zeros(labels.shape[0], dtype=np.int64)
        for m in full:
            counts[np.searchsorted(labels, m["labels"])] += m["counts"]
        if classes is not None:
            given = np.unique(np.asarray(classes))
            unseen = np.setdiff1d(labels, given)
            if unseen.size:
                _fail(f"y has labels {unseen.tolist()} not in classes {given.tolist()}")
            counts = np.array([counts[np.searchsorted(labels, c)]
                               if c in labels else 0 for c in given], dtype=np.int64)
            labels = given
        if labels.shape[0] < 2:
            _fail(f"y has {labels.shape[0]} class over all partitions; a classifier "
                  "needs at least 2 classes")
        ds.classes, ds.counts = labels, counts
    return ds


def class_weight_factors(class_weight, classes, counts):
    """scikit-learn's class weights from the global label counts (what
    ``compute_class_weight`` gives on the concatenated labels)."""
    if class_weight is None:
        return None
    if class_weight == "balanced":
        n = counts.sum()
        with np.errstate(divide="ignore"):
            return np.where(counts > 0, n / (len(classes) * np.maximum(counts, 1)), 1.0)
    if isinstance(class_weight, dict):
        missing = [c for c in class_weight if c not in set(classes.tolist())]
        if missing:
            raise ValueError(f"class_weight has classes {missing} that are not in y")
        return np.array([float(class_weight.get(c, 1.0)) for c in classes.tolist()])
    raise ValueError(f"class_weight must be None, 'balanced' or a dict, got {class_weight!r}")


def _row_split(rows, m):
    """Contiguous groups of partitions, one per shard, balanced by rows."""
    total = float(sum(rows))
    groups, cur, acc = [], [], 0.0
    for i, r in enumerate(rows):
        cur.append(i)
        acc += r
        left_parts = len(rows) - i - 1
        left_groups = m - len(groups) - 1
        if left_groups > 0 and (acc >= total * (len(groups) + 1) / m or
                                left_parts == left_groups):
            groups.append(cur)
            cur = []
    if cur:
        groups.append(cur)
    return groups


def build_shards(client, ds, spec):
    """One shard per worker from contiguous runs of non-empty partitions, each
    placed on the worker holding most of its bytes (the partitions of a
    dask collection stay where they were computed)."""
    workers = sorted(client.scheduler_info(n_workers=-1)["workers"])
    full = [i for i, m in enumerate(ds.metas) if m["n"] > 0]
    groups = _row_split([ds.metas[i]["n"] for i in full], min(len(workers), len(full)))
    groups = [[full[j] for j in g] for g in groups]
    who = client.who_has([ds.parts[i] for i in full])
    holders = {i: set(who.get(ds.parts[i].key, ())) for i in full}
    local = []
    for g in groups:
        by = {w: sum(ds.metas[i]["nbytes"] for i in g if w in holders[i]) for w in workers}
        local.append(by)
    order = sorted(range(len(groups)), key=lambda j: -max(local[j].values(), default=0))
    taken, place = set(), {}
    for j in order:
        free = [w for w in workers if w not in taken] or workers
        place[j] = max(free, key=lambda w: (local[j].get(w, 0), -free.index(w)))
        taken.add(place[j])
    shards = []
    for j, g in enumerate(groups):
        s = dict(spec)
        s["seed"] = None if spec["seed"] is None else [spec["seed"], j]
        shards.append(client.submit(_worker.make_shard, j, s, *[ds.parts[i] for i in g],
                                    workers=[place[j]], allow_other_workers=True,
                                    pure=False))
    rows = client.gather(client.map(_worker.shard_rows, shards, pure=False))
    ds.shards, ds.shard_rows, ds.placement = shards, rows, [place[j] for j in range(len(groups))]
    ds.parts = None      # the shards hold the rows now; the partitions can go
    return ds


def check_positive_int(name, value, lo=1):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo:
        raise ValueError(f"{name} must be an int >= {lo}, got {value!r}")
