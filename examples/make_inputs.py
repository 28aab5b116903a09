"""Make a worker matrix for ``secagg round``: honest gradients plus a few attackers.

Honest rows are a shared direction plus noise (like minibatch gradients of one model);
Byzantine rows (the last ``--byzantine``) are sign-flipped and scaled by 10 (a sign-flip
attack), which plain averaging absorbs and the robust rules reject.
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--d", type=int, default=10_000)
    p.add_argument("--byzantine", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    rng = np.random.default_rng(a.seed)
    true_grad = rng.normal(size=a.d) * 0.05
    X = true_grad + rng.normal(size=(a.n, a.d)) * 0.05
    if a.byzantine:
        X[-a.byzantine :] = -10.0 * X[-a.byzantine :]
    np.save(a.out, X)
    print(f"wrote {a.out}: {a.n} workers ({a.byzantine} Byzantine, sign flip ×10), d={a.d}")


if __name__ == "__main__":
    main()
