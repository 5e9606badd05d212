"""Generate the ahead-of-time Cython update kernels from ``kernels/rules.py``.

Run by ``setup.py`` at build time (``write_sources``) and by hand with
``python kernels/cython/generate.py``.  It reads each registered rule's *source*
(``inspect.getsource`` + ``ast``) and translates it into Cython, so the update
formulas exist only once, in ``rules.py``; nothing here is hand-copied.  The
rule language is described once (docs/rules.md, kernels/rulelang); the
emitter is kernels/rulelang/cython.py.

Output, per rule ``name`` and per C type (``f32`` = float, ``f64`` = double):

``_updates.pxd``  (the C-level API other packages ``cimport``)
    ``name_rule_f32/_f64``  the rule as a ``cdef inline`` function returning a
                           ctuple ``(p, *states)``;
    ``name_loop_f32/_f64``  the elementwise loop over raw pointers (declared);
    ``name_loop``           a fused-type (``real_t``) convenience dispatcher;
    ``normal``              the counter-based Gaussian (C twin of
                           ``kernels/_helpers.normal``);
    enum ``NAME_NHYPER``    the number of kernel hyperparameters.
``_updates.pyx``  (the implementation and the Python entry points)
    the loops (one branch-free loop body per combination of present optional
    states, averaging and noise; OpenMP ``prange`` when ``parallel``) and
    ``def name(params, grads, *states, avg, hyper, avg_weight, key, offsets,
    parallel=False)`` with the calling convention of the Numba ``serial``
    driver; ``prepare(rule, step, scalars, lr, user)``, the rules' prepare
    in C (templates/prepare_host.pyx.tp, as in prepare.pyx): a Cython step's
    kernel hyperparameters, equal to rules.py's prepare bit for bit.

The code of both files is in the Tempita templates ``templates/_updates.pxd.tp``
and ``templates/_updates.pyx.tp``; this file translates the rules and computes
the values of the templates' holes (``_templates.render``).

This file must import neither numba nor optkern: the build environment only
has Cython, NumPy and setuptools.  It loads ``rules.py`` by file path.
"""

import keyword
import os
import runpy
import sys
import types

HERE = os.path.dirname(os.path.abspath(__file__))
RULES_PATH = os.path.normpath(os.path.join(HERE, os.pardir, "rules.py"))


_files = types.SimpleNamespace(**runpy.run_path(os.path.join(HERE, os.pardir, "_files.py")))
_write_if_changed = _files.write_if_changed
MODULE = "_updates"

# (suffix, C type, NumPy type number name, libc function for each math call)
CTYPES = (
    ("f32", "float", "NPY_FLOAT32", {"sqrt": "sqrtf", "fabs": "fabsf", "pow": "powf"}),
    ("f64", "double", "NPY_FLOAT64", {"sqrt": "sqrt", "fabs": "fabs", "pow": "pow"}),
)

# names the generated loops and Python entry points use for their own
# parameters and locals (a state may not be called any of these)
_LOOP_NAMES = frozenset(
    "p g avg n hyper avg_weight has_key key offset parallel i _case _w _z _p "
    "params grads offsets P G A h k nt typenum ukey off off_arr pp gp ap ptrs".split()
    + [f"{c}{j}" for c in ("s", "S", "_s") for j in range(64)])


def load_rules(path=RULES_PATH):
    """Import kernels/rules.py by file path (no optkern, no numba)."""
    return _files.load_by_path("_optkern_rules_for_cython", path)


# --------------------------------------------------------------------------
# Translating one rule: kernels/rulelang (the language: docs/rules.md)
# --------------------------------------------------------------------------

_rulelang = _files.rulelang()
RuleError = _rulelang.RuleError
_RESERVED = _rulelang.cython.RESERVED
_Translator = _rulelang.cython.UpdateEmitter


# --------------------------------------------------------------------------
# Per-rule values for the templates' holes (templates/_updates.pxd.tp and
# templates/_updates.pyx.tp hold the code)
# --------------------------------------------------------------------------

class _Loop:
    """One C type's elementwise loop of a rule (or an alias of another rule's)."""

    def __init__(self, signature, sfx, ctype, alias):
        self.signature, self.sfx, self.ctype, self.alias = signature, sfx, ctype, alias


class _Case:
    """One combination of present optional states, averaging and noise: the
    loop gets one branch-free body per combination."""

    def __init__(self, index, present, avg, noise):
        self.index, self.present, self.avg, self.noise = index, present, avg, noise


class _Rule:
    def __init__(self, rules, spec):
        self.spec = spec
        self.name = spec.name
        self.rule_fn = spec.rule.__name__
        self.states = list(rules.state_names(spec))
        self.states_doc = ", ".join(spec.states) or "(none)"
        self.optional = [i for i, s in enumerate(spec.states) if "?" in s]
        self.hyper = list(spec.kernel_hyper)
        self.translators = [_Translator(spec.rule, spec, ct, sfx, libm)
                            for sfx, ct, _, libm in CTYPES]
        self.uses_z = self.translators[0].uses_z
        # translate now, so an unsupported construct fails on registration
        self.rule_texts = [tr.render() for tr in self.translators]
        clash = {s for s in self.states
                 if s in _LOOP_NAMES or s in _RESERVED or keyword.iskeyword(s)
                 or not s.isidentifier()}
        if clash or len(set(self.states)) != len(self.states):
            raise RuleError(f"rule {spec.name!r}: state names {sorted(clash) or self.states} "
                            "clash with the generated loop's own names")
        if not self.name.isidentifier() or self.name in _RESERVED:
            raise RuleError(f"rule name {self.name!r} cannot name a Cython function")
        # Each combination of (present optional states, averaging, noise) gets
        # its own loop, so that the loops carry no per-element branches; bit b
        # of the case number is flag b.
        flags = [(f"{self.states[j]} != NULL", ("state", j)) for j in self.optional]
        flags.append(("avg != NULL", ("avg", None)))
        if self.uses_z:
            flags.append(("has_key", ("noise", None)))
        self.case_flags = [cond for cond, _ in flags]
        self.cases = []
        for case in range(1 << len(flags)):
            present = [True] * len(self.states)
            has_avg = noise = False
            for bit, (_, (kind, j)) in enumerate(flags):
                on = bool(case >> bit & 1)
                if kind == "state":
                    present[j] = on
                elif kind == "avg":
                    has_avg = on
                else:
                    noise = on
            self.cases.append(_Case(case, present, has_avg, noise))
        self.loops = [_Loop(self.loop_signature(sfx, ct), sfx, ct, None)
                      for sfx, ct, _, _ in CTYPES]

    def loop_signature(self, suffix, ctype):
        out_t, in_t = f"{suffix}_out", f"{suffix}_in"
        states = "".join(f"{out_t} {s}, " for s in self.states)
        return (f"void {self.name}_loop_{suffix}({out_t} p, {in_t} g, {states}"
                f"{out_t} avg, Py_ssize_t n, const double* hyper, double avg_weight, "
                f"bint has_key, uint64_t key, int64_t offset, bint parallel) noexcept nogil")


def _mark_aliases(specs):
    """A rule registered under a second name with the same function, states
    and kernel hyperparameters (SGLD = SGD's rule) reuses the first's loops."""
    compiled = {}
    for r in specs:
        same = compiled.setdefault((r.spec.rule, tuple(r.spec.states), tuple(r.hyper)), r)
        if same is not r:
            for lp in r.loops:
                lp.alias = same.name
    return specs


# --------------------------------------------------------------------------

_templates = _files.load_by_path("_optkern_cython_templates",
                                 os.path.join(HERE, "_templates.py"))
TEMPLATES = (f"{MODULE}.pxd.tp", f"{MODULE}.pyx.tp")
# the templates _updates.pyx.tp includes, and the generator of the C twins of
# the rules' prepare it includes (the Cython step's host prepare)
INCLUDED = ("prepare_host.pyx.tp", "prepare_twin.pyx.tp", "host_minmax.pyx.tp")
GENERATE_EPOCHS = os.path.join(HERE, "generate_epochs.py")


def _render(rules, specs, digest, prepares):
    holes = dict(rules=specs, rule_names=tuple(r.name for r in specs), digest=digest,
                 prepares=prepares,
                 ctypes=[(sfx, ct) for sfx, ct, _, _ in CTYPES],
                 typenums={sfx: tn for sfx, _, tn, _ in CTYPES})
    return {tp[:-3]: _templates.render(tp, **holes) for tp in TEMPLATES}


def _generate(rules_path):
    rules = load_rules(rules_path)
    specs = _mark_aliases([_Rule(rules, spec) for spec in rules.RULES.values()])
    # SOURCE_HASH, compiled into the module, covers every source of its text
    # (templates, this generator, the renderer, the rules, the rule language's
    # emitters) and the text itself, so a build older than any of them is
    # detectable.
    prepares = _files.load_by_path("_optkern_generate_epochs_for_updates",
                                   GENERATE_EPOCHS).prepare_functions(rules)
    sources = [__file__, _templates.__file__, rules_path, GENERATE_EPOCHS,
               *(_templates.template_path(tp) for tp in TEMPLATES + INCLUDED),
               *_templates.language_files()]
    digest = _templates.source_digest(sources, _render(rules, specs, "", prepares).values())
    return _render(rules, specs, digest, prepares), digest


def generate(rules_path=RULES_PATH):
    """Return {"_updates.pxd": text, "_updates.pyx": text}."""
    return _generate(rules_path)[0]


def source_hash(rules_path=RULES_PATH):
    """The SOURCE_HASH a module built from the current rules would carry."""
    return _generate(rules_path)[1]


def write_sources(out_dir=HERE, rules_path=RULES_PATH):
    """Write _updates.pxd/.pyx into out_dir; return [(module_name, pyx_path)]."""
    os.makedirs(out_dir, exist_ok=True)
    for fname, text in generate(rules_path).items():
        _write_if_changed(os.path.join(out_dir, fname), text)
    return [(MODULE, os.path.join(out_dir, f"{MODULE}.pyx"))]


if __name__ == "__main__":
    for mod, path in write_sources(sys.argv[1] if len(sys.argv) > 1 else HERE):
        print(f"wrote {path} (and .pxd)")
