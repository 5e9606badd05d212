"""Generate the ahead-of-time Cython training epoch (``_epochs.pyx``).

The Cython twin of ``kernels/epoch_drivers.py``: one compiled call runs every
minibatch of an epoch (scores, the loss rule per row, the rank-1 gradient
accumulation, the penalty, the learning-rate schedule, the noise key, the
optimizer's ``prepare`` and its update loop on W then b, Polyak averaging), in
the same order and with the same arithmetic as the Numba ``epoch_serial``.

Nothing is written per (loss, rule) pair.  The generated module holds

* one epoch loop per (C type, layout) -- float/double x dense/CSR, rendered
  from a single template -- that calls the row loss, the rule's ``prepare``
  and its update loop through function pointers; the loop itself is
  translated from ``kernels/epoch_rules.py`` (the one definition the Numba
  epoch compiles too: ``rulelang.epoch.CythonEpochEmitter``), its primitives
  the sections of ``templates/epoch_primitives.pyx.tp``;
* per loss, a C row-loss function (wrapping the scalar/row rule that
  ``generate_losses.py`` translated into ``_losses.pxd``);
* per rule, a C twin of its ``prepare`` translated from the Python source in
  ``rules.py`` (``ast``; the same approach as ``generate.py``) and an adapter
  to the rule's ``<rule>_loop_f32/_f64`` in ``_updates.pxd`` (the rule
  language: docs/rules.md; the emitters: kernels/rulelang/c.py);
* the C twins of ``schedule_rules.schedule_factor`` (translated the same way)
  and of ``_helpers.step_key`` (splitmix64, uint64 arithmetic).

Integer powers (``beta1 ** step``, ``a ** math.floor(...)``) follow Numba's
``float ** int`` (binary exponentiation, not ``pow``), so the schedules and
bias corrections agree with the Numba epoch bit for bit.

The code is in Tempita templates: ``templates/_epochs.pyx.tp`` (the module),
``_epochs_dense.c.tp`` (the dense pass in C), ``epoch_adapters.pyx.tp`` (the
row-loss and update adapters, shared with ``_sparse_epochs.pyx``),
``prepare_twin.pyx.tp`` and ``schedule_twin.pyx.tp`` (around the translated
bodies); this file translates the Python functions and computes the holes'
values.

Run by ``setup.py`` at build time (``write_sources``) and by hand with
``python kernels/cython/generate_epochs.py``.  Imports neither numba nor
optkern: it loads the rule modules by file path.
"""

import ast
import os
import runpy
import sys
import textwrap
import types

HERE = os.path.dirname(os.path.abspath(__file__))
KERNELS = os.path.normpath(os.path.join(HERE, os.pardir))
MODULE = "_epochs"

CTYPES = (("f32", "float"), ("f64", "double"))
LAYOUTS = ("dense", "csr")

# room in the fixed-size C buffers of the epoch loop
MAX_HYPER = 32
MAX_USER = 32
MAX_SCALARS = 8
MAX_STATES = 8


_files = types.SimpleNamespace(**runpy.run_path(os.path.join(KERNELS, "_files.py")))
_load_by_path = _files.load_by_path
_write_if_changed = _files.write_if_changed


def _load(name, fname):
    return _files.load_by_path(name, os.path.join(KERNELS, fname))


# the lane form of a row rule: the same text the Numba epoch compiles
rule_lanes = _load_by_path("_optkern_rule_lanes_for_epochs", os.path.join(KERNELS, "rule_lanes.py"))


# --------------------------------------------------------------------------
# Host scalar functions (prepare, schedule_factor) -> Cython, and the lane
# form -> C: kernels/rulelang (the language: docs/rules.md)
# --------------------------------------------------------------------------

_rulelang = _files.rulelang()
TranslateError = _rulelang.RuleError
_HostTranslator = _rulelang.c.HostEmitter
_LaneToC = _rulelang.c.LaneToC


def _render_prepare(spec, fname=None):
    """C twin of ``spec.prepare`` (named ``fname``, by default
    ``_prepare_<rule>``): fills hyper[] and scalars_out[]."""
    tr = _HostTranslator(spec.prepare, int_first=True,
                         globals_=vars(sys.modules[spec.prepare.__module__]))
    params = tr.params
    nuser = len(spec.user_hyper)
    if len(params) != 2 + nuser:
        raise TranslateError(f"{tr.where}: expected (step, scalars, {', '.join(spec.user_hyper)})")
    nsc = len(spec.scalar_states)
    nh = len(spec.kernel_hyper)
    scalars = params[1]

    def ret(t, st):
        v = st.value
        if not (isinstance(v, ast.Tuple) and len(v.elts) == 2
                and isinstance(v.elts[0], ast.Tuple) and len(v.elts[0].elts) == nh):
            raise t.err(st, f"a return other than ((the {nh} kernel hyperparameters), scalars)")
        lines = [f"hyper[{j}] = <double>{t.expr(x)}" for j, x in enumerate(v.elts[0].elts)]
        s = v.elts[1]
        if isinstance(s, ast.Name) and s.id == scalars:
            lines += [f"scalars_out[{j}] = scalars[{j}]" for j in range(nsc)]
        elif isinstance(s, ast.Tuple) and len(s.elts) == nsc:
            lines += [f"scalars_out[{j}] = <double>{t.expr(x)}" for j, x in enumerate(s.elts)]
        else:
            raise t.err(st, f"a scalar state other than {scalars!r} or a {nsc}-tuple")
        lines.append("return")
        return lines

    return _templates.render(
        "prepare_twin.pyx.tp", fname=fname or f"_prepare_{spec.name}",
        fn_name=spec.prepare.__name__, params=params, var=tr.var,
        body=tr.local_decls() + tr.stmts(tr.fdef.body, 4, ret))


def prepare_functions(rules):
    """The C twins of every rule's prepare under its public name
    ``<rule>_prepare``, for templates/prepare_host.pyx.tp (prepare.pyx and
    _updates.pyx).  There ``_ipow`` is ``x ** step`` as Python computes it,
    pow(x, (double)step), so these equal rules.py's prepare, which the
    optimizer classes run, bit for bit; this module's epoch keeps Numba's
    binary exponentiation (its epoch's prepare), which can differ in the
    last bit.  A rule without a prepare (a test's toy rules) has none."""
    return [_render_prepare(spec, f"{spec.name}_prepare").rstrip("\n")
            for spec in rules.RULES.values() if spec.prepare is not None]


def _render_schedule(sched_mod):
    fn = sched_mod.schedule_factor
    tr = _HostTranslator(fn, int_first=False, globals_=vars(sched_mod))

    def ret(t, st):
        return [f"return <double>{t.expr(st.value)}"]

    text = _templates.render("schedule_twin.pyx.tp", params=tr.params, var=tr.var,
                             body=tr.local_decls() + tr.stmts(tr.fdef.body, 4, ret))
    return text, len(tr.params)


# --------------------------------------------------------------------------
# The dense pass in C (issue 18, item 2): the structure of the Numba epoch's
# _BATCH_DENSE_LANES -- scores written straight into the lane form from the
# shuffled rows where they lie, the loss rule across the lanes, the rank-m
# update of dW^T from the lane form -- as C functions compiled three times,
# for AVX-512, AVX2+FMA and the baseline ISA, and chosen at import by the
# CPU (__builtin_cpu_supports).  C rather than Cython because a function
# attribute (target) is what lets one portable build use the host's vector
# width; GCC's vector extensions make the register tiles explicit.
# --------------------------------------------------------------------------


# (level, target attribute, vector bytes); level 0 is the build's own ISA
SIMD_LEVELS = ((0, "", 16), (1, 'OKX_TARGET("avx2,fma")', 32),
               (2, 'OKX_TARGET("avx512f,avx512dq,avx2,fma")', 64))
DENSE_ROWS = 48  # rows per block: the Numba epoch's DENSE_LANE_ROWS

_SIZE = {"float": 4, "double": 8}

# Scores with vectors across the outputs (small k): W held d x KP (k padded to
# a whole number of vectors), per feature one vector multiply-add per row and
# vector of outputs, no horizontal sums.  Up to ACROSS_KMAX outputs and
# ACROSS_NV vectors a row; rows per register tile by the number of vectors
# (accumulators + W's vectors + the broadcast within the 16 vector registers).
ACROSS_KMAX = 16
# below these k the dot-product tiles (6 rows x 2 outputs) were as fast or
# faster (docs/epochs.md, "Ninth round"): a vector of 4 float32 holding 2 or 3
# outputs wastes half of it
ACROSS_KMIN = {"float": 4, "double": 3}
ACROSS_NV = 4
ACROSS_ROWS = {1: 8, 2: 6, 3: 4, 4: 3}


def _across_table(ct, vbytes):
    """k -> (vector bytes, vectors a row) for the across-outputs scores at a
    level whose widest vector is vbytes: the narrowest vector that holds all
    k outputs, else the widest in as few vectors as ACROSS_NV allows; k
    without an entry keep the dot-product tiles."""
    widths = [vb for vb in (16, 32, 64) if vb <= vbytes]
    table = {}
    for k in range(ACROSS_KMIN[ct], ACROSS_KMAX + 1):
        for vb in widths:
            if vb // _SIZE[ct] >= k:
                table[k] = (vb, 1)
                break
        else:
            ve = vbytes // _SIZE[ct]
            nv = -(-k // ve)
            if nv <= ACROSS_NV:
                table[k] = (vbytes, nv)
    return table


def _hsum_steps(ct, n_elems):
    """A tree sum of a vector of n_elems: halves added down to one element;
    per step (half width, its type, step number, the vector halved)."""
    steps, cur, width, step = [], "a", n_elems, 0
    while width > 1:
        half = width // 2
        steps.append((half, f"okx_h{half}_t{step}" if half > 1 else ct, step, cur))
        cur, width, step = f"s{step}", half, step + 1
    return steps


def _f32_literal(v):
    import struct
    f = struct.unpack("f", struct.pack("f", v))[0]
    return repr(f) + "f"




class _Lanes:
    """A row loss's lane form (kernels/rule_lanes.py's Python text, the one the
    Numba epoch compiles) translated to C per (C type, SIMD level)."""

    def __init__(self, spec, lane_py):
        self.name = spec.name
        self.slots = rule_lanes.lane_slots(spec.rule)
        fdef = ast.parse(lane_py).body[0]
        self.body = {(sfx, lvl): "\n".join(_LaneToC(ct, sfx, lvl).stmts(fdef.body, "    "))
                     for sfx, ct in CTYPES for lvl, _, _ in SIMD_LEVELS}


def _lanes(loss_specs):
    out = []
    for ls in loss_specs:
        if ls.kind != "row":
            continue
        try:
            lane_py = rule_lanes.lane_source(ls.rule, "_lanes")
        except rule_lanes.NotLaneable:
            continue
        out.append(_Lanes(ls, lane_py))
    return out


def _c_text(lanes):
    """The dense pass's C code (templates/_epochs_dense.c.tp), for the
    ``cdef extern from *`` block of _epochs.pyx."""
    import math
    text = _templates.render(
        "_epochs_dense.c.tp", simd_levels=SIMD_LEVELS, ctypes=CTYPES, size=_SIZE,
        inv=[1.0 / math.factorial(i) for i in range(14)], f32_literal=_f32_literal,
        hsum_steps={(ct, vbytes): _hsum_steps(ct, vbytes // _SIZE[ct])
                    for _, ct in CTYPES for _, _, vbytes in SIMD_LEVELS},
        lanes=lanes, across_rows=ACROSS_ROWS,
        penalty_c=_templates.penalty_twins(_rulelang.c.CHostEmitter, "C_FUNCTIONS"),
        across={(ct, vbytes): _across_table(ct, vbytes)
                for _, ct in CTYPES for _, _, vbytes in SIMD_LEVELS})
    if '"""' in text or "\\" in text:
        raise TranslateError("the C block may not hold triple quotes or backslashes")
    return text[:-1]   # the block's closing quotes follow on the next line


# --------------------------------------------------------------------------
# The module text: templates/_epochs.pyx.tp (with the row-loss and update
# adapters of templates/epoch_adapters.pyx.tp, shared with _sparse_epochs)
# --------------------------------------------------------------------------

DENSE_BUFFERS = ("WT", "dWT", "ZT", "DT", "S", "SI", "LS", "YB", "PBf", "PBi",
                 "PBd")  # freed on every exit (after the helper thread stops)


def check_buffers(rules):
    for spec in rules.RULES.values():
        ns = len(rules.state_names(spec))
        if ns > MAX_STATES or len(spec.kernel_hyper) > MAX_HYPER \
                or len(spec.user_hyper) > MAX_USER or len(spec.scalar_states) > MAX_SCALARS:
            raise TranslateError(f"rule {spec.name!r} exceeds the epoch's fixed buffers")


def adapter_holes(rules, losses, sched_mod):
    """The holes epoch_adapters.pyx.tp needs (and both epochs' tables)."""
    rule_specs = list(rules.RULES.values())
    loss_specs = list(losses.LOSS_RULES.values())
    schedule, n_sched = _render_schedule(sched_mod)
    if n_sched != 7:
        raise TranslateError("schedule_factor must take (kind, t, a, b, c, warmup, start)")
    return dict(
        rules=rule_specs, losses=loss_specs, state_names=rules.state_names,
        ctypes=CTYPES, typenums={"f32": "NPY_FLOAT32", "f64": "NPY_FLOAT64"},
        schedule=schedule.rstrip("\n"),
        penalty=_templates.penalty_twins(_HostTranslator),
        prepares=[_render_prepare(spec).rstrip("\n") for spec in rule_specs],
        rule_names=tuple(s.name for s in rule_specs),
        loss_names=tuple(s.name for s in loss_specs),
        loss_cimports=", ".join(dict.fromkeys(ls.rule.__name__ for ls in loss_specs)),
        optional=tuple(tuple("?" in s for s in spec.states) for spec in rule_specs),
        scalar_init=tuple(tuple(v for _, v in spec.scalar_states) for spec in rule_specs),
        MAX_HYPER=MAX_HYPER, MAX_USER=MAX_USER, MAX_SCALARS=MAX_SCALARS,
        MAX_STATES=MAX_STATES)


def primitive_sections(layout, sfx, ct):
    """The Cython code of the epoch's primitives for one layout and C type
    (templates/epoch_primitives.pyx.tp): {section name: text}."""
    text = _templates.render("epoch_primitives.pyx.tp", layout=layout, sfx=sfx, ct=ct,
                             dense_buffers=DENSE_BUFFERS)
    return sections_of(text, "epoch_primitives.pyx.tp")


def sections_of(text, template):
    """{section name: text} of a rendered primitives template: each section
    starts at a line "#: <name>"."""
    sections, name = {}, None
    for line in text.split("\n"):
        if line.startswith("#: "):
            name = line[3:].strip()
            sections[name] = []
        elif name is not None:
            sections[name].append(line)
        elif line.strip():
            raise TranslateError(f"{template}: text before its first section: {line!r}")
    return {k: "\n".join(v) for k, v in sections.items()}


def epoch_loops(epoch_fn):
    """The minibatch epoch written once (kernels/epoch_rules.py) as the
    Cython of each (layout, C suffix): (declarations, statements), lines
    indented for the body of ``_epoch_<sfx>_<layout>``."""
    decls, loops = {}, {}
    for layout in LAYOUTS:
        for sfx, ct in CTYPES:
            em = _rulelang.epoch.CythonEpochEmitter(epoch_fn, primitive_sections(layout, sfx, ct))
            decls[layout, sfx] = em.decls(4)
            loops[layout, sfx] = em.body(4)
    return decls, loops


def _render(rules, losses, sched_mod, digest, epoch_fn):
    check_buffers(rules)
    holes = adapter_holes(rules, losses, sched_mod)
    lanes = _lanes(holes["losses"])
    decls, loops = epoch_loops(epoch_fn)
    return _templates.render(
        f"{MODULE}.pyx.tp", digest=digest, layouts=LAYOUTS, lanes=lanes,
        lane_slots={ln.name: ln.slots for ln in lanes}, c_text=textwrap.indent(_c_text(lanes), "    "),
        DENSE_ROWS=DENSE_ROWS, dense_buffers=DENSE_BUFFERS, epoch_decls=decls,
        epoch_loop=loops, **holes)


_templates = _files.load_by_path("_optkern_cython_templates", os.path.join(HERE, "_templates.py"))
TEMPLATES = (f"{MODULE}.pyx.tp", "_epochs_dense.c.tp", "epoch_adapters.pyx.tp",
             "epoch_primitives.pyx.tp",
             "host_minmax.pyx.tp", "prepare_twin.pyx.tp", "schedule_twin.pyx.tp",
             "penalty_twin.pyx.tp")
RULE_FILES = ("rules.py", "loss_rules.py", "schedule_rules.py", "rule_lanes.py", "penalty.py",
              "epoch_rules.py")


def sources_of(module_file, templates, rule_files):
    """Every file a generated epoch module is made from."""
    return ([module_file, __file__, _templates.__file__]
            + [_templates.template_path(t) for t in templates]
            + [os.path.join(KERNELS, f) for f in rule_files]
            + _templates.language_files())


def _generate():
    rules = _load("_optkern_rules_for_epochs", "rules.py")
    losses = _load("_optkern_loss_rules_for_epochs", "loss_rules.py")
    sched = _load("_optkern_schedule_rules_for_epochs", "schedule_rules.py")
    epoch = _load("_optkern_epoch_rules_for_epochs", "epoch_rules.py").minibatch_epoch
    # SOURCE_HASH covers every source of the text and the text itself
    digest = _templates.source_digest(sources_of(__file__, TEMPLATES, RULE_FILES),
                                      [_render(rules, losses, sched, "", epoch)])
    return {f"{MODULE}.pyx": _render(rules, losses, sched, digest, epoch)}, digest


def generate():
    """Return {"_epochs.pyx": text}."""
    return _generate()[0]


def source_hash():
    """The SOURCE_HASH a module built from the current sources would carry."""
    return _generate()[1]


def write_sources(out_dir=HERE):
    """Write _epochs.pyx into out_dir; return [(module_name, pyx_path)]."""
    os.makedirs(out_dir, exist_ok=True)
    for fname, text in generate().items():
        _write_if_changed(os.path.join(out_dir, fname), text)
    return [(MODULE, os.path.join(out_dir, f"{MODULE}.pyx"))]


if __name__ == "__main__":
    for mod, path in write_sources(sys.argv[1] if len(sys.argv) > 1 else HERE):
        print(f"wrote {path}")
