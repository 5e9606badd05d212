"""Saving and loading models, and reading data files.  No pickle anywhere.

Model files
-----------
``save(estimator, path)`` writes one ``.npz`` archive: every array of the
fitted model (``coef_``, ``intercept_``, ``classes_``, ...) as its own entry,
and an entry ``__optkern__`` holding UTF-8 JSON metadata::

    {"format": "optkern-model", "format_version": 1, "optkern_version": "0.1.0",
     "estimator": "LinearClassifier", "params": {...get_params()...},
     "attributes": {...fitted attributes...}, "extra": {...}}

Values that JSON cannot hold are tagged: arrays as ``{"__array__": entry}``,
tuples as ``{"__tuple__": [...]}``, dicts with non-string keys as
``{"__items__": [[k, v], ...]}``, schedules as ``{"__schedule__": name,
"args": {...}}`` and optimizer instances (used as templates) as
``{"__optimizer__": name, "args": {...}}``.  Callables (``callbacks``) and
random generators (``random_state``) cannot be written down: they are saved
as None, with a warning.  ``load(path)`` reads it back with
``np.load(allow_pickle=False)``; predictions are bit-identical.  Files written
by a newer format version, corrupt files and files of another kind are
refused with a ``ModelFileError`` that says which.

The file is written to a temporary file beside ``path`` and renamed over it,
so a failed save never leaves a half-written or clobbered model.

Data files
----------
``load_data(path)`` reads svmlight/libsvm (scikit-learn's loader: sparse
stays sparse), CSV/TSV, ``.npz`` (entries ``X`` and optionally ``y``) and
``.npy`` (a 2-D array, one column of which is the label).  Malformed input
raises ``DataFileError`` naming the file and the line.
"""

import bz2
import contextlib
import csv
import gzip
import inspect
import itertools
import json
import math
import numbers
import os
import tempfile
import warnings
import zipfile
import zlib

import numpy as np
import scipy.sparse as sp

__all__ = ["FORMAT_VERSION", "ModelFileError", "DataFileError", "save", "load",
           "load_with_metadata", "read_metadata", "load_data", "atomic_write", "detect_format", "DATA_FORMATS"]

FORMAT_VERSION = 1
FORMAT_NAME = "optkern-model"
META_KEY = "__optkern__"
ESTIMATORS = ("LinearClassifier", "LinearRegressor")


class ModelFileError(ValueError):
    """A model file that is corrupt, of another kind, or from a newer format."""


class DataFileError(ValueError):
    """A data file that cannot be read; the message names the file and line."""


# ---------------------------------------------------------------------------
# atomic writes
# ---------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a temporary file beside ``path``; on success rename it to ``path``.

    On any exception the temporary file is removed and ``path`` is untouched.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{path}: the directory {directory} does not exist")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.",
                               suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8",
                                                             "newline": ""})) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        try:
            # mkstemp makes the file 0600; give it the permissions a plain open would
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)
        except OSError:
            pass
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


# ---------------------------------------------------------------------------
# JSON encoding with arrays kept aside
# ---------------------------------------------------------------------------
class _Encoder:
    def __init__(self):
        self.arrays = {}
        self.warnings = []

    def array(self, value, name):
        a = np.asarray(value)
        info = {"__array__": name}
        if a.dtype == object:
            if not all(isinstance(v, str) for v in a.ravel()):
                raise TypeError(f"{name}: an object array holding non-strings cannot be "
                                "saved without pickle")
            a = a.astype(str)
            info["object"] = True
        elif a.dtype.hasobject or a.dtype.kind == "V":
            raise TypeError(f"{name}: arrays of dtype {a.dtype} cannot be saved")
        key = name
        n = 1
        while key in self.arrays or key == META_KEY:
            n += 1
            key = f"{name}#{n}"
        info["__array__"] = key
        # checked against the entry's .npy header before it is read (load)
        info["shape"] = [int(x) for x in a.shape]
        info["dtype"] = a.dtype.str
        self.arrays[key] = a
        return info

    def value(self, v, name):
        from optkern import optimizers as _opt
        from optkern import schedules as _sched

        if v is None or isinstance(v, (bool, str)):
            return v
        if isinstance(v, np.bool_):
            return bool(v)
        if isinstance(v, numbers.Integral):
            return int(v)
        if isinstance(v, numbers.Real):
            f = float(v)
            return f if math.isfinite(f) else {"__float__": repr(f)}
        if isinstance(v, np.ndarray):
            return self.array(v, name)
        if isinstance(v, tuple):
            return {"__tuple__": [self.value(x, f"{name}.{i}") for i, x in enumerate(v)]}
        if isinstance(v, list):
            return [self.value(x, f"{name}.{i}") for i, x in enumerate(v)]
        if isinstance(v, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in v):
                return {k: self.value(x, f"{name}.{k}") for k, x in v.items()}
            return {"__items__": [[self.value(k, f"{name}.key"), self.value(x, f"{name}.{k}")]
                                  for k, x in v.items()]}
        if isinstance(v, np.random.Generator):
            bg = v.bit_generator
            return {"__generator__": type(bg).__name__,
                    "state": self.value(bg.state, f"{name}.state")}
        if isinstance(v, _sched.Schedule):
            return self.schedule(v, name)
        if isinstance(v, _opt.Optimizer):
            return self.optimizer(v, name)
        raise TypeError(f"{name}={v!r} (a {type(v).__name__}) cannot be saved without "
                        "pickle; use plain numbers, strings, names or optkern schedules")

    def schedule(self, s, name):
        from optkern import schedules as _sched

        cls = type(s)
        if getattr(_sched, cls.__name__, None) is not cls:
            raise TypeError(f"{name}: the schedule {s!r} is a {cls.__name__}, not one of "
                            "optkern.schedules' classes, and cannot be saved without pickle; "
                            "use a built-in schedule")
        args = {}
        for pname in inspect.signature(cls.__init__).parameters:
            if pname == "self":
                continue
            attr = "factor_reduce" if (cls is _sched.ReduceOnPlateau and pname == "factor") \
                else pname
            args[pname] = self.value(getattr(s, attr), f"{name}.{pname}")
        return {"__schedule__": cls.__name__, "args": args}

    def optimizer(self, o, name):
        from optkern import optimizers as _opt

        cls = type(o)
        if getattr(_opt, cls.__name__, None) is not cls:
            raise TypeError(f"{name}: the optimizer {o!r} is not one of optkern's optimizer "
                            "classes and cannot be saved; pass the optimizer by name with "
                            "optimizer_params")
        accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "params"}
        group = {k: v for k, v in o.param_groups[0].items() if k != "params" and k in accepted}
        group["backend"] = o.backend_requested
        return {"__optimizer__": cls.__name__,
                "args": {k: self.value(v, f"{name}.{k}") for k, v in group.items()}}


def _decode(v, arrays, where):
    from optkern import optimizers as _opt
    from optkern import schedules as _sched

    if isinstance(v, list):
        return [_decode(x, arrays, where) for x in v]
    if not isinstance(v, dict):
        return v
    if "__array__" in v:
        key = v["__array__"]
        if key not in arrays:
            raise ModelFileError(f"{where}: the metadata refers to an array {key!r} that is "
                                 "not in the file (corrupt file)")
        a = arrays[key]
        return a.astype(object) if v.get("object") else a
    if "__float__" in v:
        return float(v["__float__"])
    if "__tuple__" in v:
        return tuple(_decode(x, arrays, where) for x in v["__tuple__"])
    if "__items__" in v:
        return {_decode(k, arrays, where): _decode(x, arrays, where) for k, x in v["__items__"]}
    if "__generator__" in v:
        bg_cls = getattr(np.random, v["__generator__"], None)
        if not (isinstance(bg_cls, type) and issubclass(bg_cls, np.random.BitGenerator)):
            raise ModelFileError(f"{where}: unknown bit generator {v['__generator__']!r}")
        bg = bg_cls()
        bg.state = _decode(v["state"], arrays, where)
        return np.random.Generator(bg)
    if "__schedule__" in v:
        cls = getattr(_sched, v["__schedule__"], None)
        if not (isinstance(cls, type) and issubclass(cls, _sched.Schedule)):
            raise ModelFileError(f"{where}: unknown schedule {v['__schedule__']!r}")
        return cls(**{k: _decode(x, arrays, where) for k, x in v["args"].items()})
    if "__optimizer__" in v:
        cls = getattr(_opt, v["__optimizer__"], None)
        if not (isinstance(cls, type) and issubclass(cls, _opt.Optimizer)):
            raise ModelFileError(f"{where}: unknown optimizer {v['__optimizer__']!r}")
        args = {k: _decode(x, arrays, where) for k, x in v["args"].items()}
        # a template only: the estimator reads its class and hyperparameters.
        # Built on NumPy whatever the file says (a file never chooses a device);
        # the requested name is kept, validated, for the estimator and re-saving.
        requested = args.pop("backend", "auto")
        from optkern import _backend
        _backend.validate_name(requested)
        opt = cls(np.zeros(1), backend="numpy", **args)
        opt.backend_requested = requested
        return opt
    return {k: _decode(x, arrays, where) for k, x in v.items()}


# ---------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------
_UNSAVABLE_PARAMS = ("callbacks", "random_state")


def _fitted_attributes(est):
    """Public fitted attributes (trailing underscore) plus the private state
    that prediction, scoring and warm starts read."""
    out = {}
    for k, v in vars(est).items():
        if k.endswith("_") and not k.startswith("_") and not k.endswith("__"):
            out[k] = v
    # _W/_b (raw weights, before Polyak averaging), the step count, optimizer
    # state and shuffling generator: partial_fit/warm_start continue exactly
    for k in ("_y_ndim", "_k", "_W", "_b", "_t", "_opt_state", "_rng"):
        if k in vars(est):
            out[k] = vars(est)[k]
    return out


def save(estimator, path, *, extra=None):
    """Save a fitted LinearClassifier/LinearRegressor to ``path`` (an .npz archive).

    ``extra``: a JSON-safe dict stored alongside (the command line records how
    the training data was read).  The write is atomic.
    """
    import optkern

    name = type(estimator).__name__
    if name not in ESTIMATORS:
        raise TypeError(f"save expects a LinearClassifier or LinearRegressor, got {name}")
    if not hasattr(estimator, "coef_"):
        raise ValueError(f"this {name} is not fitted yet: call fit before save")
    enc = _Encoder()
    params = {}
    for k, v in estimator.get_params(deep=False).items():
        if k in _UNSAVABLE_PARAMS and not (v is None or isinstance(v, numbers.Integral)):
            warnings.warn(f"{k}={v!r} cannot be saved without pickle; the saved model "
                          f"has {k}=None", UserWarning, stacklevel=2)
            v = None
        params[k] = enc.value(v, k)
    attributes = {}
    for k, v in _fitted_attributes(estimator).items():
        try:
            attributes[k] = enc.value(v, k)
        except TypeError:
            warnings.warn(f"the fitted attribute {k} ({type(v).__name__}) cannot be saved "
                          "without pickle and is left out", UserWarning, stacklevel=2)
    meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
            "optkern_version": optkern.__version__, "estimator": name,
            "params": params, "attributes": attributes,
            "extra": enc.value(dict(extra or {}), "extra")}
    text = json.dumps(meta, allow_nan=False, sort_keys=True)
    arrays = dict(enc.arrays)
    arrays[META_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    with atomic_write(path) as fh:
        np.savez(fh, **arrays)
    return os.fspath(path)


def _open_archive(path):
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such model file")
    if os.path.isdir(path):
        raise ModelFileError(f"{path} is a directory, not an optkern model file")
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic == b"\x93NUMPY":
        raise ModelFileError(f"{path} is a single .npy array, not an optkern model file "
                             "(models are .npz archives written by optkern's save)")
    if magic[:4] != b"PK\x03\x04":
        raise ModelFileError(f"{path} is not an optkern model file (not an .npz archive"
                             f"{'; it is empty' if not magic else ''})")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error,
            NotImplementedError, RuntimeError) as exc:
        raise ModelFileError(f"{path} is corrupt or truncated (a damaged .npz archive: "
                             f"{exc})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ModelFileError(f"{path} is a single .npy array, not an optkern model file "
                             "(models are .npz archives written by optkern's save)")
    return data


# Limits for files from strangers (docs/cli.md, "Trust model").
MAX_METADATA_BYTES = 16 * 2 ** 20     # the JSON entry
MAX_DEPTH = 32                        # nesting of the JSON metadata
MAX_ARRAY_BYTES_ENV = "OPTKERN_MAX_MODEL_BYTES"
_TOP_KEYS = {"format": str, "format_version": int, "optkern_version": str, "estimator": str,
             "params": dict, "attributes": dict, "extra": dict}
# the only attributes a model file may set: what fit sets (io._fitted_attributes)
_FITTED = {"n_features_in_", "feature_names_in_", "classes_", "coef_", "intercept_",
           "n_iter_", "history_", "t_", "_y_ndim", "_k", "_W", "_b", "_t", "_opt_state",
           "_rng"}
_ALLOWED_KINDS = "fiubU"              # float, int, unsigned, bool, unicode: no objects


def _max_array_bytes():
    """Bytes all of a model file's arrays may take: OPTKERN_MAX_MODEL_BYTES, else the
    memory limit of optkern._memory (80% of the available memory by default)."""
    from optkern import _memory

    raw = os.environ.get(MAX_ARRAY_BYTES_ENV)
    if raw:
        kind, value = _memory.parse_memory_limit(raw)
        if kind == "bytes":
            return value
        if kind == "none":
            return None
    limit, _ = _memory.memory_limit()
    return limit


class _Archive:
    """A model file opened lazily: only the entries the metadata names are read,
    each after its .npy header (shape, dtype) has been checked."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.budget = _max_array_bytes()
        self.used = 0
        _open_archive(self.path).close()    # kind checks: magic bytes, .npy vs .npz
        try:
            self.zf = zipfile.ZipFile(self.path)
            self.infos = {i.filename: i for i in self.zf.infolist()}
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, zlib.error,
                NotImplementedError, RuntimeError) as exc:
            raise ModelFileError(f"{self.path} is corrupt or truncated (a damaged .npz "
                                 f"archive: {exc})") from None

    def close(self):
        self.zf.close()

    def __contains__(self, key):
        return key + ".npy" in self.infos

    def names(self):
        return sorted(n[:-4] if n.endswith(".npy") else n for n in self.infos)

    def read(self, key, where, max_bytes=None, expect=None):
        """The array ``key`` after checking its header: dtype kind, size against the
        budget (and ``max_bytes``), shape/dtype against ``expect`` when given."""
        info = self.infos.get(key + ".npy")
        if info is None:
            raise ModelFileError(f"{self.path}: {where}: the metadata refers to an array "
                                 f"{key!r} that is not in the file (corrupt file)")
        fmt = np.lib.format
        try:
            with self.zf.open(info) as fh:
                version = fmt.read_magic(fh)
                if version == (1, 0):
                    shape, fortran, dtype = fmt.read_array_header_1_0(fh)
                elif version == (2, 0):
                    shape, fortran, dtype = fmt.read_array_header_2_0(fh)
                else:
                    raise ValueError(f".npy format version {version}")
                if dtype.hasobject or dtype.kind not in _ALLOWED_KINDS or dtype.fields:
                    raise ModelFileError(f"{self.path}: {where}: array of dtype {dtype} is "
                                         "not allowed in a model file")
                count = math.prod(shape)
                nbytes = count * dtype.itemsize
                if expect is not None:
                    want_shape, want_dtype = expect
                    if want_shape is not None and tuple(shape) != tuple(want_shape):
                        raise ModelFileError(f"{self.path}: {where}: the array has shape "
                                             f"{tuple(shape)} but the metadata says "
                                             f"{tuple(want_shape)}")
                    if want_dtype is not None and dtype != np.dtype(want_dtype):
                        raise ModelFileError(f"{self.path}: {where}: the array has dtype "
                                             f"{dtype} but the metadata says {want_dtype}")
                limit = max_bytes if max_bytes is not None else None
                if limit is not None and nbytes > limit:
                    raise ModelFileError(f"{self.path}: {where}: the array claims shape "
                                         f"{tuple(shape)} ({nbytes} bytes), more than the "
                                         f"{limit} bytes allowed for it")
                if self.budget is not None and self.used + nbytes > self.budget:
                    raise ModelFileError(
                        f"{self.path}: {where}: the arrays would take {self.used + nbytes} "
                        f"bytes, above the limit of {self.budget} ({MAX_ARRAY_BYTES_ENV} or "
                        "the memory limit); refusing to read it")
                if info.file_size != fh.tell() + nbytes:
                    raise ModelFileError(f"{self.path}: {where}: the array's header says "
                                         f"{nbytes} bytes of data but the entry holds "
                                         f"{info.file_size - fh.tell()} (corrupt file)")
                data = fh.read(nbytes)
        except ModelFileError:
            raise
        except Exception as exc:  # noqa: BLE001 -- numpy's header parser and zlib raise
            # many kinds (ValueError, SyntaxError, tokenize.TokenError, zlib.error, ...);
            # on bytes from a stranger every one of them means "corrupt"
            raise ModelFileError(f"{self.path}: {where}: the entry {key!r} cannot be read "
                                 f"({type(exc).__name__}: {str(exc)[:200]})") from None
        if len(data) != nbytes:
            raise ModelFileError(f"{self.path}: {where}: the entry {key!r} is truncated")
        self.used += nbytes
        a = np.frombuffer(data, dtype=dtype, count=count)
        a = a.reshape(shape, order="F" if fortran else "C")
        return np.array(a, order="C")   # writeable, owned


def _depth(v, limit, where):
    stack = [(v, 1)]
    while stack:
        x, d = stack.pop()
        if d > limit:
            raise ModelFileError(f"{where}: the metadata is nested deeper than {limit} levels")
        if isinstance(x, dict):
            stack.extend((y, d + 1) for y in x.values())
        elif isinstance(x, list):
            stack.extend((y, d + 1) for y in x)


def _read_meta(path, archive):
    if META_KEY not in archive:
        raise ModelFileError(f"{path} is an .npz archive but not an optkern model file "
                             f"(no {META_KEY!r} entry; it holds {archive.names()[:10]})")
    raw = archive.read(META_KEY, "metadata", max_bytes=MAX_METADATA_BYTES)
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise ModelFileError(f"{path} is corrupt (its metadata entry is not bytes)")
    try:
        meta = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise ModelFileError(f"{path} is corrupt (its metadata is not valid JSON: "
                             f"{str(exc)[:200]})") from None
    except RecursionError:
        raise ModelFileError(f"{path}: the metadata is nested too deeply") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{path} is not an optkern model file (its metadata does not say "
                             f"format={FORMAT_NAME!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelFileError(f"{path} is corrupt (format_version={str(version)[:80]!r})")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path} was written by a newer optkern (optkern "
            f"{str(meta.get('optkern_version', '?'))[:40]}, "
            f"model format version {version}); this optkern reads format versions up to "
            f"{FORMAT_VERSION}: upgrade optkern to load it")
    _depth(meta, MAX_DEPTH, path)
    for key, value in meta.items():
        if key not in _TOP_KEYS:
            raise ModelFileError(f"{path}: unknown metadata field {key[:80]!r}")
        if not isinstance(value, _TOP_KEYS[key]):
            raise ModelFileError(f"{path}: metadata field {key!r} must be a "
                                 f"{_TOP_KEYS[key].__name__}, got {type(value).__name__}")
    return meta


def _read_all(path):
    """(metadata, arrays): only the arrays the metadata refers to, header-checked."""
    path = os.fspath(path)
    archive = _Archive(path)
    try:
        meta = _read_meta(path, archive)
        arrays = {}
        for where, info in _array_refs(meta):
            key = info.get("__array__")
            if not isinstance(key, str):
                raise ModelFileError(f"{path}: {where}: array reference {str(key)[:80]!r} is "
                                     "not an entry name")
            if key == META_KEY:
                raise ModelFileError(f"{path}: {where}: refers to the metadata entry")
            if key in arrays:
                continue
            expect = None
            if "shape" in info or "dtype" in info:
                shape = info.get("shape")
                try:
                    expect = (None if shape is None else tuple(int(x) for x in shape),
                              None if info.get("dtype") is None else np.dtype(info["dtype"]))
                except (TypeError, ValueError):
                    raise ModelFileError(f"{path}: {where}: bad shape/dtype in the metadata") \
                        from None
            arrays[key] = archive.read(key, where, expect=expect)
    finally:
        archive.close()
    return meta, arrays


def _array_refs(meta):
    """(where, reference dict) of every {"__array__": ...} in the metadata."""
    stack = [(k, v) for k, v in meta.items()]
    while stack:
        where, v = stack.pop()
        if isinstance(v, dict):
            if "__array__" in v:
                yield where, v
            else:
                stack.extend((f"{where}.{k}", x) for k, x in v.items())
        elif isinstance(v, list):
            stack.extend((f"{where}.{i}", x) for i, x in enumerate(v))


def read_metadata(path):
    """The JSON metadata of a model file (validated as in ``load``), arrays decoded."""
    meta, arrays = _read_all(path)
    out = dict(meta)
    try:
        out["extra"] = _decode(meta.get("extra", {}), arrays, os.fspath(path))
    except ModelFileError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError, IndexError,
            NotImplementedError, RecursionError, OverflowError) as exc:
        raise ModelFileError(f"{os.fspath(path)}: extra cannot be read ({str(exc)[:200]})") \
            from None
    return out


def load(path):
    """Load a model written by ``save``: a fitted LinearClassifier/LinearRegressor."""
    return load_with_metadata(path)[0]


_DECODE_ERRORS = (TypeError, ValueError, KeyError, AttributeError, IndexError,
                  NotImplementedError, RecursionError, OverflowError, ZeroDivisionError)


def _decode_section(raw, arrays, path, section):
    """Decode every entry of the metadata's ``section``; any failure is a
    ModelFileError naming ``section.key``."""
    out = {}
    for k, v in raw.items():
        try:
            out[k] = _decode(v, arrays, f"{path}: {section}.{k}")
        except ModelFileError:
            raise
        except _DECODE_ERRORS as exc:
            raise ModelFileError(f"{path}: {section}.{k} cannot be restored "
                                 f"({type(exc).__name__}: {str(exc)[:200]})") from None
    return out

def load_with_metadata(path):
    """``(estimator, extra)``: the model and the ``extra`` dict given to ``save``.

    Safe on files from strangers (docs/cli.md, "Trust model"): only the
    entries the metadata names are read, each after its header; the metadata
    is validated (known fields, parameters the estimator accepts and
    validates, fitted attributes only, consistent shapes, finite weights,
    sorted unique classes, non-negative counts); anything else is a
    ``ModelFileError`` naming the field.  No device is chosen: an optimizer
    template is built on the NumPy backend whatever the file says.
    """
    from optkern import estimators

    path = os.fspath(path)
    meta, arrays = _read_all(path)
    name = meta.get("estimator")
    if name not in ESTIMATORS:
        raise ModelFileError(f"{path}: unknown estimator {str(name)[:80]!r} (expected one of "
                             f"{list(ESTIMATORS)})")
    cls = getattr(estimators, name)
    est = cls()
    valid = est.get_params(deep=False)
    raw_params = meta.get("params", {})
    unknown = sorted(set(raw_params) - set(valid))
    if unknown:
        raise ModelFileError(f"{path}: params {[u[:80] for u in unknown[:5]]} are not "
                             f"parameters of {name} in this optkern version")
    raw_attrs = meta.get("attributes", {})
    bad = sorted(set(raw_attrs) - _FITTED)
    if bad:
        raise ModelFileError(f"{path}: attributes {[b[:80] for b in bad[:5]]} are not fitted "
                             f"attributes of {name}; a model file may set only "
                             f"{sorted(_FITTED)}")
    params = _decode_section(raw_params, arrays, path, "params")
    try:
        est.set_params(**params)
        est._validate_params()
    except _DECODE_ERRORS as exc:
        raise ModelFileError(f"{path}: invalid params ({str(exc)[:300]})") from None
    attributes = _decode_section(raw_attrs, arrays, path, "attributes")
    _check_attributes(attributes, name, path)
    for k, v in attributes.items():
        setattr(est, k, v)
    _check_consistent(est, path)
    try:
        extra = _decode(meta.get("extra", {}), arrays, f"{path}: extra")
    except ModelFileError:
        raise
    except _DECODE_ERRORS as exc:
        raise ModelFileError(f"{path}: extra cannot be restored ({str(exc)[:200]})") from None
    return est, extra if isinstance(extra, dict) else {}


def _is_count(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)) and v >= 0


def _check_attributes(attrs, name, path):
    """Types and values of the fitted attributes, before any is set."""
    def bad(field, msg):
        raise ModelFileError(f"{path}: attributes.{field} {msg}")

    for field in ("coef_", "intercept_", "n_features_in_"):
        if field not in attrs:
            bad(field, "is missing")
    for field in ("n_features_in_", "n_iter_", "t_", "_t", "_k"):
        if field in attrs and not _is_count(attrs[field]):
            bad(field, f"must be a non-negative integer, got {str(attrs[field])[:80]!r}")
    if attrs["n_features_in_"] < 1:
        bad("n_features_in_", "must be at least 1")
    if "_y_ndim" in attrs and attrs["_y_ndim"] not in (1, 2):
        bad("_y_ndim", f"must be 1 or 2, got {str(attrs['_y_ndim'])[:80]!r}")
    for field in ("coef_", "intercept_", "_W", "_b"):
        if field not in attrs or (field == "_b" and attrs[field] is None):
            continue
        a = attrs[field]
        if not isinstance(a, np.ndarray) or a.dtype.kind != "f":
            bad(field, "must be a float array")
        if not np.all(np.isfinite(a)):
            bad(field, "holds NaN or infinity")
    if "history_" in attrs:
        h = attrs["history_"]
        if not isinstance(h, list) or not all(isinstance(r, dict) for r in h):
            bad("history_", "must be a list of dicts")
    if "feature_names_in_" in attrs:
        f = attrs["feature_names_in_"]
        if not isinstance(f, np.ndarray) or f.ndim != 1 or \
                len(f) != attrs["n_features_in_"]:
            bad("feature_names_in_", "must be one name per feature")
    if "_opt_state" in attrs and attrs["_opt_state"] is not None:
        st = attrs["_opt_state"]
        if not isinstance(st, dict):
            bad("_opt_state", "must be a dict or None")
        for where, v in _walk(st, "_opt_state"):
            if where.endswith(".step") and not _is_count(v):
                bad(where, f"must be a non-negative integer, got {str(v)[:80]!r}")
            if isinstance(v, np.ndarray) and v.dtype.kind == "f" and not np.all(np.isfinite(v)):
                bad(where, "holds NaN or infinity")
    if name == "LinearClassifier":
        c = attrs.get("classes_")
        if not isinstance(c, np.ndarray) or c.ndim != 1 or len(c) < 2:
            bad("classes_", "must be a 1-D array of at least 2 classes")
        if c.dtype.kind == "f" and not np.all(np.isfinite(c)):
            bad("classes_", "holds NaN or infinity")
        try:
            ordered = bool(np.all(c[1:] > c[:-1]))
        except TypeError:
            ordered = False
        if not ordered:
            bad("classes_", "must be sorted and unique (as fit makes it)")


def _walk(v, where):
    stack = [(where, v)]
    while stack:
        w, x = stack.pop()
        yield w, x
        if isinstance(x, dict):
            stack.extend((f"{w}.{k}", y) for k, y in x.items())
        elif isinstance(x, (list, tuple)):
            stack.extend((f"{w}.{i}", y) for i, y in enumerate(x))


def _check_consistent(est, path):
    def bad(msg):
        raise ModelFileError(f"{path} is corrupt ({msg})")

    coef = est.coef_
    if not isinstance(coef, np.ndarray) or coef.dtype.kind != "f" or coef.ndim not in (1, 2):
        bad("coef_ is not a 1-D or 2-D float array")
    if coef.shape[-1] != est.n_features_in_:
        bad(f"coef_ has {coef.shape[-1]} features but n_features_in_={est.n_features_in_}")
    n_out = 1 if coef.ndim == 1 else coef.shape[0]
    if np.shape(est.intercept_) != (n_out,):
        bad(f"intercept_ has shape {np.shape(est.intercept_)}, expected ({n_out},)")
    if est.intercept_.dtype != coef.dtype:
        bad(f"intercept_ is {est.intercept_.dtype} but coef_ is {coef.dtype}")
    W = getattr(est, "_W", None)
    if W is not None and (W.shape != (coef.shape[-1], n_out) or W.dtype != coef.dtype):
        bad(f"_W has shape {W.shape}, expected {(coef.shape[-1], n_out)}")
    b = getattr(est, "_b", None)
    if b is not None and (b.shape != (n_out,) or b.dtype != coef.dtype):
        bad(f"_b has shape {b.shape}, expected ({n_out},)")
    if type(est).__name__ == "LinearClassifier":
        classes = est.classes_
        expected = 1 if len(classes) == 2 else len(classes)
        if n_out != expected:
            bad(f"{len(classes)} classes but coef_ has {n_out} rows")
        if getattr(est, "loss", None) in ("log", "hinge", "squared_hinge", "modified_huber") \
                and len(classes) > 2 and n_out != len(classes):
            bad("a binary loss with more than 2 classes needs one row per class")


# ---------------------------------------------------------------------------
# data files
# ---------------------------------------------------------------------------
DATA_FORMATS = ("svmlight", "csv", "npz", "npy")
_EXTENSIONS = {".svm": "svmlight", ".svmlight": "svmlight", ".libsvm": "svmlight",
               ".lsvm": "svmlight", ".csv": "csv", ".tsv": "csv", ".npz": "npz",
               ".npy": "npy"}


def _strip_compression(path):
    base = os.fspath(path)
    for ext in (".gz", ".bz2"):
        if base.lower().endswith(ext):
            return base[: -len(ext)]
    return base


def _compression(path):
    """"gz", "bz2" or None, from the file's magic bytes (a gzip file named
    data.svm is still gzip), else from the name."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(3)
    except OSError:
        magic = b""
    if magic[:2] == b"\x1f\x8b":
        return "gz"
    if magic == b"BZh":
        return "bz2"
    return None


def _open_text(path):
    # utf-8-sig: a byte-order mark is dropped instead of glued to the first field
    kind = _compression(path)
    if kind == "gz":
        return gzip.open(path, "rt", encoding="utf-8-sig", errors="replace", newline="")
    if kind == "bz2":
        return bz2.open(path, "rt", encoding="utf-8-sig", errors="replace", newline="")
    return open(path, "r", encoding="utf-8-sig", errors="replace", newline="")


def _open_binary_for_svmlight(path):
    """A binary file object for scikit-learn's svmlight reader: decompressed by
    magic bytes, with a UTF-8 byte-order mark skipped."""
    kind = _compression(path)
    fh = gzip.open(path, "rb") if kind == "gz" else bz2.open(path, "rb") if kind == "bz2" \
        else open(path, "rb")
    try:
        if fh.read(3) != b"\xef\xbb\xbf":
            fh.seek(0)
    except BaseException:
        fh.close()
        raise
    return fh


def detect_format(path):
    """The data format from the file name, or from the first data line of a .txt/.dat."""
    base = _strip_compression(path)
    ext = os.path.splitext(base)[1].lower()
    if ext in _EXTENSIONS:
        return _EXTENSIONS[ext]
    # an unknown extension: look at the first non-comment line
    try:
        with _open_text(path) as fh:
            for line in fh:
                line = line.split("#", 1)[0].strip()
                if line:
                    return "svmlight" if ":" in line else "csv"
    except (OSError, EOFError, UnicodeError):
        pass
    raise DataFileError(f"{os.fspath(path)}: cannot tell the data format from the name or the "
                        f"content; pass --format (one of {', '.join(DATA_FORMATS)})")


MAX_FEATURE_INDEX = 2 ** 31 - 1   # scikit-learn's svmlight reader stores int32 indices
_ECHO = 80                          # characters of a bad token shown in an error message


def _short(token):
    """repr of a token from a file, at most ~80 characters (a 10 MB token is not echoed)."""
    text = str(token)
    if len(text) <= _ECHO:
        return repr(text)
    return repr(text[:_ECHO]) + f"... ({len(text)} characters)"


def _check_svmlight_lines(path):
    """Find the first malformed svmlight line; raise DataFileError naming it."""
    path = os.fspath(path)
    with _open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            body = line.split("#", 1)[0].strip()
            if not body:
                continue
            tokens = body.split()
            label = tokens[0]
            try:
                for part in label.split(","):
                    float(part)
            except ValueError:
                raise DataFileError(f"{path}, line {lineno}: the label {_short(label)} is not a "
                                    "number") from None
            if ":" in label:
                raise DataFileError(f"{path}, line {lineno}: the line starts with {_short(label)}, "
                                    "not with a label")
            last = -1
            for tok in tokens[1:]:
                idx, sep, val = tok.partition(":")
                if not sep:
                    raise DataFileError(f"{path}, line {lineno}: {_short(tok)} is not of the form "
                                        "index:value")
                if idx == "qid":
                    continue
                try:
                    i = int(idx)
                except ValueError:
                    raise DataFileError(f"{path}, line {lineno}: feature index {_short(idx)} is not "
                                        "an integer") from None
                try:
                    float(val)
                except ValueError:
                    raise DataFileError(f"{path}, line {lineno}: feature value {_short(val)} (of "
                                        f"index {_short(idx)}) is not a number") from None
                if i < 0:
                    raise DataFileError(f"{path}, line {lineno}: negative feature index {i}")
                if i > MAX_FEATURE_INDEX:
                    raise DataFileError(f"{path}, line {lineno}: feature index {_short(idx)} "
                                        f"is too large (at most {MAX_FEATURE_INDEX}); hash or "
                                        "renumber the features")
                if i <= last:
                    raise DataFileError(f"{path}, line {lineno}: feature indices must be "
                                        f"increasing ({i} after {last})")
                last = i


def _load_svmlight(path, n_features, zero_based, dtype):
    """sklearn's loader on the raw (0-based) indices, then the index base and
    the width decided here, so the caller learns which base "auto" chose."""
    from sklearn.datasets import load_svmlight_file

    path = os.fspath(path)
    try:
        with _open_binary_for_svmlight(path) as fh:
            X, y = load_svmlight_file(fh, zero_based=True, dtype=dtype)
    except (ValueError, RuntimeError, OSError, UnicodeError, EOFError, OverflowError) as exc:
        _check_svmlight_lines(path)  # names the line when it can find it
        raise DataFileError(f"{path}: not a valid svmlight/libsvm file ({exc})") from None
    X = X.tocsr()
    if X.shape[0] == 0:
        raise DataFileError(f"{path}: no data lines")
    has_zero = X.nnz > 0 and int(X.indices.min()) == 0
    if zero_based == "auto":
        zero_based = has_zero
    elif not zero_based and has_zero:
        raise DataFileError(f"{path}: has feature index 0, but the indices were taken as "
                            "1-based (as in the training file); pass --zero-based yes")
    if not zero_based:
        X = X[:, 1:] if X.shape[1] > 0 else X
    width = X.shape[1]
    if n_features is not None:
        if width > n_features:
            last = int(X.indices.max()) + (0 if zero_based else 1)
            raise DataFileError(f"{path}: has feature index {last}, beyond the {n_features} "
                                "features the model was trained on")
        width = n_features
    X = sp.csr_matrix((X.data, X.indices, X.indptr), shape=(X.shape[0], width))
    return X, y, {"format": "svmlight", "zero_based": bool(zero_based)}


def _parse_number(s):
    try:
        return float(s)
    except ValueError:
        return None


def _resolve_column(label_column, ncols, header, path):
    if label_column is None:
        return ncols - 1
    if isinstance(label_column, str) and not label_column.lstrip("-").isdigit():
        if header is None or label_column not in header:
            have = f"; the header has {header}" if header else " (the file has no header row)"
            raise DataFileError(f"{path}: no column named {label_column!r}{have}")
        return header.index(label_column)
    col = int(label_column)
    if not -ncols <= col < ncols:
        raise DataFileError(f"{path}: --label-column {col} is out of range for {ncols} "
                            "columns")
    return col % ncols


def _load_csv(path, label_column, delimiter, dtype, n_features):
    path = os.fspath(path)
    if delimiter is None:
        delimiter = "\t" if _strip_compression(path).lower().endswith(".tsv") else ","
    fast = _load_csv_fast(path, label_column, delimiter, dtype, n_features)
    if fast is not None:
        return fast
    rows = []
    header = None
    ncols = None
    with _open_text(path) as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        try:
            for row in reader:
                lineno = reader.line_num
                if not row or all(not c.strip() for c in row) or row[0].lstrip().startswith("#"):
                    continue
                row = [c.strip() for c in row]
                if ncols is None:
                    ncols = len(row)
                    if _looks_like_header(row):
                        header = row
                        continue
                if len(row) != ncols:
                    raise DataFileError(f"{path}, line {lineno}: {len(row)} fields, expected "
                                        f"{ncols} (as on the first line)")
                rows.append((lineno, row))
        except csv.Error as exc:
            raise DataFileError(f"{path}, line {reader.line_num}: {exc}") from None
    if not rows:
        raise DataFileError(f"{path}: no data rows")
    has_label = n_features is None or ncols == n_features + 1
    if n_features is not None and ncols not in (n_features, n_features + 1):
        raise DataFileError(f"{path}: {ncols} columns, but the model takes {n_features} "
                            f"features (plus optionally a label column)")
    col = _resolve_column(label_column, ncols, header, path) if has_label else None
    X = np.empty((len(rows), ncols - (col is not None)), dtype=dtype)
    labels = []
    for i, (lineno, row) in enumerate(rows):
        j = 0
        for c, field in enumerate(row):
            if c == col:
                labels.append(field)
                continue
            v = _parse_number(field)
            if v is None:
                name = f" ({_short(header[c])})" if header else ""
                raise DataFileError(f"{path}, line {lineno}: column {c + 1}{name} holds "
                                    f"{_short(field)}, not a number")
            X[i, j] = v
            j += 1
    y = None
    if col is not None:
        nums = [_parse_number(s) for s in labels]
        if all(v is not None for v in nums):
            y = np.array(nums, dtype=np.float64)
        else:
            missing = [rows[i][0] for i, s in enumerate(labels) if not s]
            if missing:
                raise DataFileError(f"{path}, line {missing[0]}: the label is empty")
            y = np.array(labels, dtype=object)
    info = {"format": "csv", "delimiter": delimiter, "header": header is not None,
            "label_column": None if col is None else
            (header[col] if header is not None else col)}
    return X, y, info


def _load_csv_fast(path, label_column, delimiter, dtype, n_features):
    """All-numeric CSV through NumPy's C parser; None to fall back to the
    line-by-line reader (text labels, ragged or malformed lines: it names the
    line)."""
    header = None
    try:
        with _open_text(path) as fh, warnings.catch_warnings():
            warnings.simplefilter("error")
            lines = (ln for ln in fh if ln.strip() and not ln.lstrip().startswith("#"))
            first = next(lines, None)
            if first is None:
                return None
            row = [c.strip() for c in next(csv.reader([first], delimiter=delimiter))]
            if _looks_like_header(row):
                header = row
            else:
                lines = itertools.chain([first], lines)
            A = np.loadtxt(lines, delimiter=delimiter, ndmin=2, dtype=np.float64)
    except (ValueError, UserWarning, OSError, UnicodeError, csv.Error):
        return None
    if A.shape[0] == 0 or not np.all(np.isfinite(A)):
        return None  # the careful reader reports it with the line
    ncols = A.shape[1]
    if header is not None and len(header) != ncols:
        return None
    if n_features is not None and ncols not in (n_features, n_features + 1):
        raise DataFileError(f"{path}: {ncols} columns, but the model takes {n_features} "
                            f"features (plus optionally a label column)")
    has_label = n_features is None or ncols == n_features + 1
    col = _resolve_column(label_column, ncols, header, path) if has_label else None
    if col is None:
        X, y = A, None
    else:
        X = np.delete(A, col, axis=1)
        y = A[:, col].copy()
    info = {"format": "csv", "delimiter": delimiter, "header": header is not None,
            "label_column": None if col is None else
            (header[col] if header is not None else col)}
    return np.ascontiguousarray(X, dtype=dtype), y, info


def _looks_like_header(row):
    return all(_parse_number(c) is None for c in row)


def _split_label_column(A, label_column, path, n_features):
    if A.ndim != 2:
        raise DataFileError(f"{path}: expected a 2-D array (rows x columns), got shape "
                            f"{A.shape}")
    ncols = A.shape[1]
    if n_features is not None:
        if ncols == n_features:
            return A, None, None
        if ncols != n_features + 1:
            raise DataFileError(f"{path}: {ncols} columns, but the model takes {n_features} "
                                "features (plus optionally a label column)")
    col = _resolve_column(label_column, ncols, None, path)
    keep = [c for c in range(ncols) if c != col]
    return A[:, keep], A[:, col], col


def _load_npz(path, label_column, dtype, n_features):
    path = os.fspath(path)
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise DataFileError(f"{path}: not a readable .npz/.npy file ({exc})") from None
    if isinstance(data, np.ndarray):
        X, y, col = _split_label_column(data, label_column, path, n_features)
        return _as_float(X, path, dtype), y, {"format": "npy", "label_column": col}
    with data:
        files = set(data.files)
        if META_KEY in files:
            raise DataFileError(f"{path} is an optkern model file, not a data file")
        try:
            if {"data", "indices", "indptr", "shape", "format"} <= files:
                X = sp.load_npz(path).tocsr()
                y = data["y"] if "y" in files else None
            else:
                xkey = next((k for k in ("X", "x", "data") if k in files), None)
                if xkey is None:
                    raise DataFileError(f"{path}: no 'X' entry (it holds {sorted(files)}); "
                                        "save the features as X and the labels as y")
                X = data[xkey]
                ykey = next((k for k in ("y", "Y", "target", "labels") if k in files), None)
                y = data[ykey] if ykey is not None else None
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise DataFileError(f"{path}: an entry cannot be read ({exc})") from None
    if not sp.issparse(X) and np.ndim(X) != 2:
        raise DataFileError(f"{path}: X must be 2-D, got shape {np.shape(X)}")
    if y is not None and (np.ndim(y) not in (1, 2) or len(y) != X.shape[0]):
        raise DataFileError(f"{path}: y has shape {np.shape(y)} but X has {X.shape[0]} rows")
    if y is not None and y.dtype.kind in "US":
        y = y.astype(str).astype(object)     # text labels, as a CSV's
    elif y is not None and y.dtype.kind not in "fiub":
        raise DataFileError(f"{path}: y has dtype {y.dtype}; labels must be numbers or text")
    return _as_float(X, path, dtype), y, {"format": "npz"}


def _as_float(X, path, dtype):
    if getattr(X, "dtype", None) is not None and np.dtype(X.dtype).kind == "c":
        raise DataFileError(f"{path}: the features are complex numbers; optkern fits real "
                            "features (split them into real and imaginary columns)")
    try:
        if sp.issparse(X):
            return X.astype(dtype).tocsr()
        return np.ascontiguousarray(X, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise DataFileError(f"{path}: the features are not numbers ({exc})") from None


def load_data(path, *, fmt=None, label_column=None, delimiter=None, n_features=None,
              zero_based="auto", dtype=np.float64):
    """Read a data file: returns ``(X, y, info)``.

    ``y`` is None when the file has no labels (CSV/npy with exactly
    ``n_features`` columns, npz without ``y``).  ``info`` records how the file
    was read (format, svmlight index base, label column) so that test files
    can be read the same way.  Raises FileNotFoundError or DataFileError.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if os.path.isdir(path):
        raise DataFileError(f"{path} is a directory, not a data file")
    fmt = fmt or detect_format(path)
    if fmt not in DATA_FORMATS:
        raise ValueError(f"format {fmt!r} is not one of {DATA_FORMATS}")
    try:
        if fmt == "svmlight":
            X, y, info = _load_svmlight(path, n_features, zero_based, dtype)
        elif fmt == "csv":
            X, y, info = _load_csv(path, label_column, delimiter, dtype, n_features)
        else:
            X, y, info = _load_npz(path, label_column, dtype, n_features)
    except (EOFError, zlib.error, OSError, UnicodeError) as exc:
        # a truncated .gz/.bz2, a damaged archive: the file, not a traceback
        if isinstance(exc, FileNotFoundError):
            raise
        raise DataFileError(f"{path}: cannot be read ({type(exc).__name__}: "
                            f"{str(exc)[:200]})") from None
    if X.shape[0] == 0:
        raise DataFileError(f"{path}: no rows")
    values = X.data if sp.issparse(X) else X
    if not np.all(np.isfinite(values)):
        raise DataFileError(f"{path}: the features contain NaN or infinity")
    if n_features is not None and X.shape[1] != n_features:
        raise DataFileError(f"{path}: {X.shape[1]} features, but the model takes {n_features}")
    return X, y, info
