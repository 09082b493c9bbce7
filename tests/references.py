"""Handwritten 50-digit mpmath references for every element-wise loss (from the issue text).

They are written independently of the specs and the parser; gradients come from
``mpmath.diff`` (numerical differentiation at 50 digits), independent of SymPy.
"""
import mpmath as mp

DPS = 50


def sig(x):
    """σ(x) = 1 / (1 + exp(−x))."""
    return 1 / (1 + mp.exp(-x))


def log_sig(x):
    """log σ(x), accurate at 50 digits for any x."""
    return -mp.log1p(mp.exp(-x))


def huber(p, y, rho=1.0):
    d = abs(y - p)
    return d**2 / (2 * rho) if d < rho else d - mp.mpf(rho) / 2


def poisson(from_logits, compute_full):
    def f(p, t, epsilon=1e-8):
        value = mp.exp(p) - t * p if from_logits else p - t * mp.log(p + epsilon)
        if compute_full and t > 1:
            value += t * mp.log(t) - t + mp.log(2 * mp.pi * t) / 2
        return value

    return f


# (spec name, variant) → f(pred, label, **params)
REFERENCES = {
    ("l2", ()): lambda p, y: (y - p) ** 2 / 2,
    ("l1", ()): lambda p, y: abs(y - p),
    ("mse", ()): lambda p, y: (p - y) ** 2,
    ("huber", ()): huber,
    ("hinge", ()): lambda p, y, margin=1.0: max(0, margin - p * y),
    ("squared_hinge", ()): lambda p, y, margin=1.0: max(0, margin - p * y) ** 2,
    ("logistic", (("label_format", "signed"),)): lambda p, y: mp.log1p(mp.exp(-p * y)),
    ("logistic", (("label_format", "binary"),)): lambda p, y: mp.log1p(mp.exp(-p * (2 * y - 1))),
    ("sigmoid_bce", (("from_sigmoid", False),)): lambda p, y, pos_weight=1.0: -(
        y * pos_weight * log_sig(p) + (1 - y) * log_sig(-p)
    ),
    ("sigmoid_bce", (("from_sigmoid", True),)): lambda p, y, pos_weight=1.0, eps=1e-12: -(
        y * pos_weight * mp.log(p + eps) + (1 - y) * mp.log(1 - p + eps)
    ),
    ("sigmoid_focal", ()): lambda p, y, alpha=0.25, gamma=2.0: (
        -y * alpha * sig(-p) ** gamma * log_sig(p) - (1 - y) * (1 - alpha) * sig(p) ** gamma * log_sig(-p)
    ),
}
def focal_dense(mode, from_logits):
    def f(x, label, alpha=0.25, gamma=2.0, eps=1e-12):
        y = 1 if label > 0 else 0
        p = x if from_logits else sig(x)
        if mode == "gluoncv":
            log_pos, log_neg = mp.log(min(p + eps, 1)), mp.log(min(1 - p + eps, 1))
        elif from_logits:
            log_pos, log_neg = mp.log(p), mp.log(1 - p)
        else:
            log_pos, log_neg = log_sig(x), log_sig(-x)
        one_minus_p = (1 - p) if from_logits else sig(-x)
        return -(y * alpha * one_minus_p**gamma * log_pos + (1 - y) * (1 - alpha) * p**gamma * log_neg)

    return f


for mode in ("exact", "gluoncv"):
    for fl in (False, True):
        REFERENCES[("focal_dense", (("mode", mode), ("from_logits", fl)))] = focal_dense(mode, fl)
for fl in (True, False):
    for cf in (True, False):
        REFERENCES[("poisson_nll", (("from_logits", fl), ("compute_full", cf)))] = poisson(fl, cf)


def value(key, pred, label, **params):
    """Reference loss at one point, as an mpf."""
    with mp.workdps(DPS):
        return REFERENCES[key](mp.mpf(float(pred)), mp.mpf(float(label)), **params)


def grad(key, pred, label, **params):
    """Reference d loss / d pred at one point, by 50-digit numerical differentiation."""
    with mp.workdps(DPS):
        return mp.diff(lambda p: REFERENCES[key](p, mp.mpf(float(label)), **params), mp.mpf(float(pred)))
