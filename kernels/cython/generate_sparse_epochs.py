"""Generate the ahead-of-time Cython sparse training epochs (``_sparse_epochs.pyx``).

The Cython twin of ``kernels/sparse_epoch_drivers.py`` (the epochs of
``sparse_updates="lazy"`` and ``"exact"`` on CSR data, whose steps touch only
the minibatch's rows of W): the same loop, in the same order, with the same
arithmetic, so that ``optkern._jit`` can serve a cold CSR fit with it while
the Numba epoch compiles (tests/test_jit.py compares the two and the NumPy
reference ``kernels/sparse_reference.py``).

As ``generate_epochs.py`` does for the dense epochs, nothing is written per
(loss, rule) pair.  The generated module holds

* per loss, the C row-loss function and, per rule, the C twin of its
  ``prepare`` and an adapter to its ``<rule>_loop_f32/_f64`` (rendered by
  ``generate_epochs.py``'s own functions from the same rules);
* ``_rows_<float|double>_<int32|int64>``: the "lazy" and "linear" modes
  (``epoch_rows``): the touched rows of a minibatch are listed once, brought
  up to date from the catch-up tables (linear mode or averaging), scored,
  the compact gradient accumulated, and each touched row of W updated by the
  rule's loop on its k contiguous elements (the same scalar rule, the same
  noise counters ``offW + f*k + j``, the same Polyak average);
* ``_scaled_<float|double>_<int32|int64>``: the "scaled" mode of plain SGD
  (``epoch_scaled``: W = s V, the cumulative L1 penalty), on the SGD rule;
* ``SparseEpoch(loss, rule, kind)``: a callable with the calling convention of
  the Numba ``epoch_rows`` / ``epoch_scaled``, with two int arguments
  ``start, stop`` after ``order`` (the minibatches cover order[start:stop]).
  As the Numba epochs do, a call with ``start > 0`` resumes the epoch where
  the previous block stopped (the catch-up timestamps are set only when
  start == 0; the end-of-epoch pass and the penalty's value run only when
  stop == len(order); the scaled epoch keeps (s, u) in its last argument
  ``carry`` between blocks).  The one-output Numba epochs (``*_k1``) need no
  twin: they do the same arithmetic as the general ones.

The epochs' loop is the one written in ``kernels/sparse_epoch_rules.py``
(the Numba epochs compile the same text), translated per mode, C type and
index type by ``rulelang.epoch.CythonEpochEmitter`` (tables
``rulelang.epoch.SPARSE``); the primitives it calls are the sections of
``templates/sparse_epoch_primitives.pyx.tp`` (``{{if kind == 'rows'}}`` where
the modes differ).  The rest is the Tempita template
``templates/_sparse_epochs.pyx.tp`` (the functions' set-up, the shared
pieces, the entry point), which includes ``epoch_adapters.pyx.tp`` with the
dense epoch; this file computes the holes' values.

Run by ``setup.py`` at build time (``write_sources``) and by hand with
``python kernels/cython/generate_sparse_epochs.py``.  Imports neither numba
nor optkern.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
try:
    import generate_epochs as _ge   # noqa: E402  (the dense twin's renderers)
finally:
    sys.path.pop(0)

MODULE = "_sparse_epochs"
CTYPES = _ge.CTYPES
ITYPES = (("i32", "int32_t", "NPY_INT32"), ("i64", "int64_t", "NPY_INT64"))
# the rule of the "scaled" mode (sparse_rules.exact_kind: plain SGD only)
SCALED_RULES = ("sgd",)

def primitive_sections(kind, sfx, ct, isfx, it, rule=None, n_hyper=0):
    """The Cython code of the sparse epoch's primitives for one mode ("rows"
    or "scaled" with its ``rule``), C type and index type
    (templates/sparse_epoch_primitives.pyx.tp): {section name: text}."""
    text = _ge._templates.render("sparse_epoch_primitives.pyx.tp", kind=kind, sfx=sfx, ct=ct,
                                 isfx=isfx, it=it, rule=rule, n_hyper=n_hyper)
    return _ge.sections_of(text, "sparse_epoch_primitives.pyx.tp")


def epoch_loops(epoch_fn, rules):
    """The sparse epoch written once (kernels/sparse_epoch_rules.py) as the
    Cython of each (mode, C suffix, index suffix): (declarations,
    statements), lines indented for the body of ``_rows_<sfx>_<isfx>`` and
    ``_scaled_<rule>_<sfx>_<isfx>``."""
    decls, loops = {}, {}
    for sfx, ct in CTYPES:
        for isfx, it, _ in ITYPES:
            for kind, rule in [("rows", None)] + [("scaled", r) for r in SCALED_RULES]:
                n_hyper = len(rules.RULES[rule].kernel_hyper) if rule else 0
                em = _ge._rulelang.epoch.CythonEpochEmitter(
                    epoch_fn, primitive_sections(kind, sfx, ct, isfx, it, rule, n_hyper),
                    epoch=_ge._rulelang.epoch.SPARSE)
                decls[kind, sfx, isfx] = em.decls(4)
                loops[kind, sfx, isfx] = em.body(4)
    return decls, loops


def _render(rules, losses, sched_mod, min_scale, digest, epoch_fn):
    _ge.check_buffers(rules)
    holes = _ge.adapter_holes(rules, losses, sched_mod)
    for rule in SCALED_RULES:
        if len(rules.state_names(rules.RULES[rule])) != 1:
            raise _ge.TranslateError(f"the scaled epoch expects one state of {rule!r}")
    decls, loops = epoch_loops(epoch_fn, rules)
    return _ge._templates.render(
        f"{MODULE}.pyx.tp", digest=digest, itypes=ITYPES, scaled_rules=SCALED_RULES,
        min_scale=min_scale, epoch_decls=decls, epoch_loop=loops, **holes)


def _min_scale():
    """sparse_rules.MIN_SCALE, read from the file (the module imports its package)."""
    import ast
    with open(os.path.join(_ge.KERNELS, "sparse_rules.py"), encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "MIN_SCALE":
            return float(ast.literal_eval(node.value))
    raise _ge.TranslateError("kernels/sparse_rules.py defines no MIN_SCALE")


TEMPLATES = (f"{MODULE}.pyx.tp", "sparse_epoch_primitives.pyx.tp", "epoch_adapters.pyx.tp",
             "host_minmax.pyx.tp", "prepare_twin.pyx.tp", "schedule_twin.pyx.tp",
             "penalty_twin.pyx.tp")
RULE_FILES = ("rules.py", "loss_rules.py", "schedule_rules.py", "sparse_rules.py", "penalty.py",
              "sparse_epoch_rules.py")


def _generate():
    rules = _ge._load("_optkern_rules_for_sparse_epochs", "rules.py")
    losses = _ge._load("_optkern_loss_rules_for_sparse_epochs", "loss_rules.py")
    sched = _ge._load("_optkern_schedule_rules_for_sparse_epochs", "schedule_rules.py")
    min_scale = _min_scale()
    epoch = _ge._load("_optkern_sparse_epoch_rules_for_sparse_epochs",
                      "sparse_epoch_rules.py").sparse_epoch
    # SOURCE_HASH covers every source of the text and the text itself
    digest = _ge._templates.source_digest(
        _ge.sources_of(__file__, TEMPLATES, RULE_FILES),
        [_render(rules, losses, sched, min_scale, "", epoch)])
    return {f"{MODULE}.pyx": _render(rules, losses, sched, min_scale, digest, epoch)}, digest


def generate():
    """Return {"_sparse_epochs.pyx": text}."""
    return _generate()[0]


def source_hash():
    """The SOURCE_HASH a module built from the current sources would carry."""
    return _generate()[1]


def write_sources(out_dir=HERE):
    """Write _sparse_epochs.pyx into out_dir; return [(module_name, pyx_path)]."""
    os.makedirs(out_dir, exist_ok=True)
    for fname, text in generate().items():
        _ge._write_if_changed(os.path.join(out_dir, fname), text)
    return [(MODULE, os.path.join(out_dir, f"{MODULE}.pyx"))]


if __name__ == "__main__":
    for mod, path in write_sources(sys.argv[1] if len(sys.argv) > 1 else HERE):
        print(f"wrote {path}")
