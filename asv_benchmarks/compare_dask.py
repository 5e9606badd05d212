"""optkern.dask on 1, 2 and 4 local workers against the in-memory fit (and
dask-ml's LogisticRegression when dask-ml is installed).

    cd asv_benchmarks && env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        python compare_dask.py [--quick] [--repeats 3] [--json out.json]

(The OPENBLAS_* variables set on the project's machines slow NumPy's BLAS,
which dask-ml's solvers use; unset them for this one command.)

Problems, both binary so that dask-ml's LogisticRegression (binary only)
runs on them too, 75/25 train/test split:

* dense: make_classification 200,000 x 100, standardised, float32;
* text: a bag-of-words generator (``text_like``): Zipf-distributed word
  counts over a 2^18-word vocabulary, ~60 words a document, tf-idf weighted
  and l2-normalised rows, CSR float32; the label is the sign of a sparse
  linear score over 2,000 of the 20,000 commonest words, plus noise.

Every cluster is a ``LocalCluster(n_workers=M, threads_per_worker=1)``,
started once; the training data is persisted on it (one partition per
worker) before the timings, so a fit's time covers what a user's fit call
costs on data already in the cluster: reading the partitions into shards,
checking them, and training.  The contenders run interleaved, one of each
per repeat; medians.  Defaults everywhere (optkern: Adam, adaptive rate,
tol=1e-3; L-BFGS: its defaults), random_state=0.

Also recorded per distributed fit: rounds, the time per round, the
per-round bytes the client broadcasts to each worker (model and optimizer
state), the peak of what the workers hold (dask's managed bytes) and of the
client process's resident memory over the data, and the bytes the workers
sent to each other (0 when every task ran where its shard lives).
"""

import argparse
import datetime
import json
import os
import pickle
import platform
import statistics
import time
import warnings

import numpy as np
import scipy.sparse as sp

import optkern


def text_like(n, vocab=2 ** 18, words=60, seed=0):
    """A tf-idf bag-of-words matrix with Zipf word frequencies, and binary labels."""
    rng = np.random.default_rng(seed)
    lengths = rng.poisson(words, n).clip(5)
    indptr = np.r_[0, np.cumsum(lengths)]
    ranks = rng.zipf(1.3, indptr[-1]) - 1
    idx = (ranks % vocab).astype(np.int32)
    perm = rng.permutation(vocab).astype(np.int32)   # frequent words spread over columns
    X = sp.csr_matrix((np.ones(indptr[-1], np.float32), perm[idx], indptr), shape=(n, vocab))
    X.sum_duplicates()
    df = np.bincount(X.indices, minlength=vocab)
    X.data *= np.log((1 + n) / (1 + df[X.indices])).astype(np.float32) + 1
    norms = np.sqrt(np.add.reduceat(X.data ** 2, X.indptr[:-1]))
    X.data /= np.repeat(norms, np.diff(X.indptr)).astype(np.float32)
    w = np.zeros(vocab, np.float32)
    hot = perm[rng.choice(20_000, 2000, replace=False)]   # among the 20,000 commonest words
    w[hot] = rng.standard_normal(2000)
    score = X @ w
    noise = 0.3 * score.std() * rng.standard_normal(n)
    y = (score + noise > np.median(score)).astype(np.int64)
    return X, y


def dense_problem(n):
    from sklearn.datasets import make_classification

    X, y = make_classification(n, 100, n_informative=60, n_redundant=20, n_classes=2,
                               n_clusters_per_class=1, class_sep=1.0, random_state=0)
    return X, y


def split(X, y, dense):
    rng = np.random.default_rng(0)
    order = rng.permutation(X.shape[0])
    cut = int(0.75 * X.shape[0])
    tr, te = np.sort(order[:cut]), np.sort(order[cut:])
    Xtr, Xte = X[tr], X[te]
    if dense:
        mean, std = Xtr.mean(0), Xtr.std(0) + 1e-12
        Xtr, Xte = (Xtr - mean) / std, (Xte - mean) / std
        Xtr, Xte = Xtr.astype(np.float32), Xte.astype(np.float32)
    return Xtr, Xte, y[tr], y[te]


def rss():
    import psutil

    return psutil.Process().memory_info().rss


def _worker_counters(dask_worker):
    import psutil

    return {"managed": int(dask_worker.state.nbytes),
            "sent": int(dask_worker.transfer_outgoing_bytes_total),
            "rss": int(psutil.Process().memory_info().rss),
            "keys": len(dask_worker.data)}


class Cluster:
    def __init__(self, m, Xtr, ytr):
        import dask.array as da
        from distributed import Client, LocalCluster

        self.m = m
        self.cluster = LocalCluster(n_workers=m, threads_per_worker=1, processes=True,
                                    dashboard_address=None, silence_logs=50)
        self.client = Client(self.cluster, set_as_default=False)
        rows = -(-Xtr.shape[0] // m)
        kw = {"asarray": False} if sp.issparse(Xtr) else {}
        X = da.from_array(Xtr, chunks=(rows, Xtr.shape[1]), **kw)
        y = da.from_array(ytr, chunks=rows)
        self.X, self.y = self.client.persist([X, y])
        from distributed import futures_of, wait

        with self.client.as_current():
            wait(futures_of(self.X) + futures_of(self.y))

    def counters(self):
        return self.client.run(_worker_counters)

    def close(self):
        self.client.close()
        self.cluster.close()


def run_dask(cl, params, Xte, yte, data_bytes):
    """One distributed fit; SGD fits sample the workers' memory after every
    round (a callback), so the peak of what they hold during the fit is seen."""
    import optkern.dask as okd

    before = cl.counters()
    base_managed = {w: c["managed"] for w, c in before.items()}
    peak = {"managed": 0, "rss": 0, "client_rss": 0}
    r0 = rss()

    def sample(row):
        now = cl.counters()
        peak["managed"] = max(peak["managed"], max(c["managed"] - base_managed.get(w, 0)
                                                   for w, c in now.items()))
        peak["rss"] = max(peak["rss"], max(c["rss"] for c in now.values()))
        peak["client_rss"] = max(peak["client_rss"], rss() - r0)

    if params.get("solver", "sgd") == "sgd":
        params = dict(params, callbacks=[sample])
    t0 = time.perf_counter()
    m = okd.LinearClassifier(client=cl.client, **params).fit(cl.X, cl.y)
    elapsed = time.perf_counter() - t0
    after = cl.counters()
    sent = sum(after[w]["sent"] - before.get(w, {"sent": 0})["sent"] for w in after)
    local = m.to_local()
    state = {k: getattr(local, k) for k in ("_W", "_b", "_opt_state") if hasattr(local, k)}
    out = {"time": elapsed, "rounds": m.n_iter_, "acc": local.score(Xte, yte),
           "per_round": elapsed / max(m.n_iter_, 1),
           "broadcast_bytes": len(pickle.dumps(state, protocol=5)),
           "peer_bytes": sent, "peer_bytes_per_round": sent / max(m.n_iter_, 1)}
    if "callbacks" in params:
        out.update(shard_bytes=data_bytes / cl.m, worker_extra_peak=peak["managed"],
                   worker_rss_peak=peak["rss"], client_rss_peak=peak["client_rss"])
    return out


def run_local(params, Xtr, ytr, Xte, yte):
    t0 = time.perf_counter()
    m = optkern.LinearClassifier(**params).fit(Xtr, ytr)
    elapsed = time.perf_counter() - t0
    epoch = statistics.median(r["time"] for r in m.history_) if m.history_ and \
        m.history_[0]["time"] is not None else None
    return {"time": elapsed, "rounds": m.n_iter_, "acc": m.score(Xte, yte),
            "epoch_time": epoch}


def run_dask_ml(cl, Xte, yte):
    from dask_ml.linear_model import LogisticRegression

    t0 = time.perf_counter()
    with cl.client.as_current():
        m = LogisticRegression().fit(cl.X, cl.y)
        elapsed = time.perf_counter() - t0
        pred = m.predict(Xte)
    pred = np.asarray(pred.compute() if hasattr(pred, "compute") else pred)
    return {"time": elapsed, "rounds": getattr(m, "n_iter_", None),
            "acc": float(np.mean(pred == yte))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="20,000 rows, 1 repeat")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", default="1,2,4")
    ap.add_argument("--json", default=None)
    ap.add_argument("--problems", default="dense,text", help="dense, text or both")
    ap.add_argument("--rows", type=int, default=None, help="rows before the split "
                    "(default 200,000; --quick 20,000)")
    ap.add_argument("--no-dask-ml", action="store_true", help="leave dask-ml out")
    args = ap.parse_args(argv)
    n = args.rows or (20_000 if args.quick else 200_000)
    repeats = 1 if args.quick else args.repeats
    ms = [int(v) for v in args.workers.split(",")]
    try:
        import dask_ml  # noqa: F401
        have_dask_ml = True
    except ImportError:
        have_dask_ml = False
    have_dask_ml = have_dask_ml and not args.no_dask_ml
    out = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
           "machine": platform.platform(), "cpus": os.cpu_count(),
           "load_before": os.getloadavg(), "n": n, "repeats": repeats, "problems": {}}
    warnings.simplefilter("ignore")
    import logging

    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    chosen = args.problems.split(",")
    for name, make, dense in ((f"dense {n:,} x 100", dense_problem, True),
                              (f"text-like {n:,} x 2^18", text_like, False)):
        if name.split()[0].split("-")[0] not in chosen:
            continue
        X, y = make(n)
        Xtr, Xte, ytr, yte = split(X, y, dense)
        nnz = Xtr.nnz / Xtr.shape[0] if sp.issparse(Xtr) else Xtr.shape[1]
        nbytes = (Xtr.data.nbytes + Xtr.indices.nbytes + Xtr.indptr.nbytes
                  if sp.issparse(Xtr) else Xtr.nbytes) + ytr.nbytes
        print(f"\n{name}: train {Xtr.shape}, {nnz:.0f} nonzeros a row", flush=True)
        clusters = {m: Cluster(m, Xtr, ytr) for m in ms}
        # SGD runs on both: on the wide sparse problem the default fit uses
        # the sparse-wide defaults (lazy Adagrad, cost per step proportional
        # to the nonzeros touched; docs/sparse.md)
        sgd = True
        contenders = [("in-memory lbfgs", lambda: run_local({"solver": "lbfgs"}, Xtr, ytr,
                                                              Xte, yte))]
        if sgd:
            contenders.insert(0, ("in-memory sgd", lambda: run_local(
                {"random_state": 0}, Xtr, ytr, Xte, yte)))
        for m in ms:
            if sgd:
                contenders.append((f"dask sgd, {m} worker{'s' * (m > 1)}",
                                   lambda m=m: run_dask(clusters[m], {"random_state": 0}, Xte,
                                                       yte, nbytes)))
            contenders.append((f"dask lbfgs, {m} worker{'s' * (m > 1)}",
                               lambda m=m: run_dask(clusters[m], {"solver": "lbfgs"}, Xte, yte,
                                                   nbytes)))
        if have_dask_ml:
            m = 2 if 2 in ms else ms[0]
            contenders.append((f"dask-ml LogisticRegression, {m} workers",
                               lambda m=m: run_dask_ml(clusters[m], Xte, yte)))
        # warm-up (compiles the kernels in every process), then interleaved repeats
        for label, fn in contenders:
            if label.startswith("dask-ml"):
                continue            # no JIT to warm; its fits are long
            try:
                fn()
            except Exception as exc:     # a peer that cannot run this problem
                print(f"  {label}: fails: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
        runs = {label: [] for label, _ in contenders}
        for _ in range(repeats):
            for label, fn in contenders:
                try:
                    runs[label].append(fn())
                except Exception as exc:
                    runs[label].append({"error": f"{type(exc).__name__}: {str(exc)[:200]}"})
        table = {}
        base = None
        for label, rs in runs.items():
            ok = [r for r in rs if "error" not in r]
            if not ok:
                table[label] = {"error": rs[0]["error"]}
                print(f"  {label:36s} error: {rs[0]['error']}")
                continue
            row = {k: statistics.median(r[k] for r in ok if r.get(k) is not None)
                   for k in ok[0] if any(r.get(k) is not None for r in ok)}
            if base is None:
                base = row["time"]       # the first row: the in-memory fit
            table[label] = row
            extra = ""
            if "per_round" in row:
                extra = (f" {row['per_round'] * 1e3:7.1f} ms/round, state "
                         f"{row['broadcast_bytes'] / 2 ** 20:6.2f} MiB, peer "
                         f"{row['peer_bytes_per_round'] / 2 ** 20:6.2f} MiB/round")
            if "shard_bytes" in row:
                extra += (f"; memory: shard {row['shard_bytes'] / 2 ** 20:.1f} MiB, worker "
                          f"holds +{row['worker_extra_peak'] / 2 ** 20:.1f} MiB "
                          f"(RSS {row['worker_rss_peak'] / 2 ** 20:.0f} MiB), client "
                          f"+{row['client_rss_peak'] / 2 ** 20:.1f} MiB")
            if "epoch_time" in row:
                extra = f" {row['epoch_time'] * 1e3:7.1f} ms/epoch"
            print(f"  {label:36s} {row['time']:7.3f} s  ({row['time'] / base:5.2f}x) "
                  f"rounds {row.get('rounds', '-')!s:>4}  acc {row['acc']:.4f}{extra}", flush=True)
        out["problems"][name] = table
        for cl in clusters.values():
            cl.close()
    out["load_after"] = os.getloadavg()
    print(f"\nload average before {out['load_before']}, after {out['load_after']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1, default=float)


if __name__ == "__main__":
    main()
