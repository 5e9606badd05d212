"""The tqdm progress bar of the estimators' ``verbose`` and the command line.

tqdm is optional: without it there is no bar (``None``), with a
RuntimeWarning where the user asked for one (``verbose=True``).
"""

import warnings


def progress_bar(iterable=None, *, warn_missing=False, **kw):
    """``tqdm.auto.tqdm(iterable, **kw)``, or None when tqdm is not installed
    (warning that ``verbose=True`` needs it when ``warn_missing``)."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if warn_missing:
            warnings.warn("verbose=True needs tqdm (pip install tqdm)", RuntimeWarning,
                          stacklevel=3)
        return None
    return tqdm(iterable, **kw)
