"""Write the Cython loss kernels (_losses.pyx, _losses.pxd) from loss_rules.py.

One rule, many targets: each rule's Python text (kernels/loss_rules.py) is
translated with ``ast`` into a ``cdef inline`` C function over the fused type
``floating`` (float and double):

* scalar rule ``f(z, y, epsilon) -> (loss, d)`` becomes
  ``floating f(floating z, floating y, floating epsilon, floating* dout)``
  (``return a, b`` -> ``dout[0] = b; return a``);
* row rule ``f(z, y, epsilon, dz) -> loss`` becomes
  ``floating f(floating* z, Py_ssize_t y, floating epsilon, floating* dz, Py_ssize_t k)``
  (``z.shape[0]`` -> ``k``);

The rule language and its types are described once (docs/rules.md,
kernels/rulelang; the emitter is kernels/rulelang/cython.py).  The rule functions and the
per-row functions ``row_<loss>`` live in ``_losses.pxd`` (inline, so other
packages can ``cimport optkern.kernels.cython._losses`` and call them from
nogil code).  ``_losses.pyx`` holds the fused kernels (same algorithm and
scratch layout as the Numba ones in loss_drivers.py: W^T once, row blocks of 6
in register tiles of 6 rows x 2 outputs for the scores (one output per
tile in the dW^T update, see ACC_TILES),
per-thread partial dW^T in ``scratch`` reduced in chunk order), the CSR
kernels, the in-place row pass of the BLAS path and the predictions.

The code of both files is in the Tempita templates ``templates/_losses.pxd.tp``
and ``templates/_losses.pyx.tp``; this file translates the rules and fills
the templates' holes (``_templates.render``).  setup.py calls
``write_sources(dir)`` and compiles what it returns.
"""

import os
import runpy
import types

HERE = os.path.dirname(os.path.abspath(__file__))


_files = types.SimpleNamespace(**runpy.run_path(os.path.join(os.path.dirname(HERE), "_files.py")))


def _load_rules():
    path = os.path.join(os.path.dirname(HERE), "loss_rules.py")
    return _files.load_by_path("_optkern_loss_rules", path)


# translating a loss rule: kernels/rulelang (the language: docs/rules.md)
_rulelang = _files.rulelang()
_ToCython = _rulelang.cython.LossToCython
_rule_to_cython = _rulelang.cython.loss_to_cython


# Row blocks and register tiles of the fused dense kernel, as in
# loss_drivers._scores_block / _accumulate_block: a full block of ROW_BLOCK
# rows computes its scores in tiles of ROW_BLOCK rows x SCORE_TILES outputs
# (the largest tile that fits first, then smaller ones) and its rank-ROW_BLOCK
# update of dW^T in tiles of ROW_BLOCK rows x ACC_TILES outputs; a partial
# block (the end of a chunk) goes row by row.  The update keeps one output per
# tile here (the Numba kernel uses 5): setup.py compiles with -O3 and no
# -march, and GCC vectorises the update loop (SSE2) only while it needs few
# run-time alias checks -- with 5 output rows stored per step it fell back to
# scalar code (18 ms against 13 ms at (4096, 784, 10), one thread, measured
# 2026-11-25 on the project machine; the 4-row kernel before: 12.7 ms).
ROW_BLOCK = 6          # must equal loss_drivers.ROW_BLOCK: scratch_size() sizes the scratch
SCORE_TILES = (2, 1)
ACC_TILES = (1,)


class _Loss:
    """The values one loss fills into the templates."""

    def __init__(self, spec):
        self.name = spec.name
        self.kind = spec.kind
        self.rule_fn = spec.rule.__name__
        self.rule_text = _rule_to_cython(spec).rstrip("\n")


_templates = _files.load_by_path("_optkern_cython_templates", os.path.join(HERE, "_templates.py"))
TEMPLATES = ("_losses.pxd.tp", "_losses.pyx.tp")


def sources():
    """(pxd_text, pyx_text) generated from the loss rules
    (templates/_losses.pxd.tp and _losses.pyx.tp hold the code)."""
    rules = _load_rules()
    losses = [_Loss(spec) for spec in rules.LOSS_RULES.values()]
    holes = dict(losses=losses, loss_ids={loss.name: i for i, loss in enumerate(losses)},
                 ROW_BLOCK=ROW_BLOCK, SCORE_TILES=SCORE_TILES, ACC_TILES=ACC_TILES,
                 penalty=_templates.penalty_twins(_rulelang.c.HostEmitter))
    return tuple(_templates.render(tp, **holes) for tp in TEMPLATES)




_write_if_changed = _files.write_if_changed


def write_sources(directory):
    pxd, pyx = sources()
    _write_if_changed(os.path.join(directory, "_losses.pxd"), pxd)
    pyx_path = os.path.join(directory, "_losses.pyx")
    _write_if_changed(pyx_path, pyx)
    return [("_losses", pyx_path)]


if __name__ == "__main__":
    print(write_sources(HERE))
