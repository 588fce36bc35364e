"""A scikit-learn hyperparameter sweep: one remote call per setting, then the best model.

    python examples/sweep.py            # 5 x 5 grid of an RBF SVM on the digits data set, 5-fold CV
    python examples/sweep.py --small    # 2 x 2 grid, 3-fold CV on 600 digits (the tests run this)

Each call loads the digits data set (it ships inside scikit-learn: nothing is
downloaded), cross-validates one (C, gamma) setting and returns its mean
accuracy. The driver picks the best setting and fits the final model on it
locally. On Lambda the workers' runtime needs scikit-learn
(``wrenpack build-runtime scikit-learn``).
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time

try:
    import sklearn  # noqa: F401 - evaluate() and main() import its parts; checked here so that its absence is one line
except ImportError:
    sys.exit("examples/sweep.py needs scikit-learn, which the examples extra installs: pip install -e '.[examples]'")

import wrenpack


def evaluate(params: dict, folds: int = 5, samples: int | None = None) -> dict:
    """Mean cross-validated accuracy of one setting (on the first ``samples`` digits, or all)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import cross_val_score
    from sklearn.svm import SVC

    x, y = load_digits(return_X_y=True)
    x, y = x[:samples], y[:samples]
    t0 = time.perf_counter()
    scores = cross_val_score(SVC(**params), x, y, cv=folds)
    return {"params": params, "accuracy": float(scores.mean()), "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="a 2 x 2 grid, 3-fold CV on 600 digits")
    args = ap.parse_args(argv)
    cs = [1.0, 10.0] if args.small else [0.1, 1.0, 10.0, 100.0, 1000.0]
    gammas = [1e-3, 3e-3] if args.small else [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
    grid = [{"C": c, "gamma": g} for c, g in itertools.product(cs, gammas)]
    folds = 3 if args.small else 5
    samples = 600 if args.small else None

    t0 = time.perf_counter()
    results = wrenpack.get(wrenpack.remote(evaluate, memory=1024).map(grid, folds=folds, samples=samples))
    elapsed = time.perf_counter() - t0
    for r in sorted(results, key=lambda r: -r["accuracy"]):
        print(f"  C={r['params']['C']:<7g} gamma={r['params']['gamma']:<7g} accuracy {r['accuracy']:.4f}")
    best = max(results, key=lambda r: r["accuracy"])

    from sklearn.datasets import load_digits
    from sklearn.svm import SVC

    x, y = load_digits(return_X_y=True)
    x, y = x[:samples], y[:samples]
    model = SVC(**best["params"]).fit(x, y)
    print(f"{len(grid)} settings in {elapsed:.2f} s; best {best['params']} with {best['accuracy']:.4f} "
          f"cross-validated accuracy; final model fitted ({model.n_support_.sum()} support vectors)")
    return 0 if best["accuracy"] > 0.8 else 1  # a sanity check: chance is 0.1


if __name__ == "__main__":
    sys.exit(main())
