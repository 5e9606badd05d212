"""The metrics ``optkern train`` and ``evaluate`` report: accuracy and log
loss for classifiers, R^2, RMSE and MAE for regressors (scikit-learn's
functions, imported on first use)."""

import numpy as np


def is_classifier(est):
    return type(est).__name__ == "LinearClassifier"


def has_proba(est):
    return is_classifier(est) and est.loss in ("softmax", "log", "modified_huber")


def metrics(est, X, y):
    """Accuracy and log loss (classifiers) or R^2, RMSE, MAE (regressors)."""
    from sklearn import metrics as M

    if is_classifier(est):
        out = {"n_samples": int(X.shape[0]),
               "accuracy": float(M.accuracy_score(y, est.predict(X)))}
        if has_proba(est):
            proba = est.predict_proba(X)
            out["log_loss"] = float(M.log_loss(y, proba, labels=est.classes_))
        return out
    pred = est.predict(X)
    y = np.asarray(y, dtype=np.float64)
    return {"n_samples": int(X.shape[0]), "r2": float(M.r2_score(y, pred)),
            "rmse": float(np.sqrt(M.mean_squared_error(y, pred))),
            "mae": float(M.mean_absolute_error(y, pred))}
