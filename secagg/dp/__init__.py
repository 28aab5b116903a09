"""Differential privacy for secagg rounds (``docs/dp.md``).

* :mod:`secagg.dp.sampler`: exact discrete Gaussian sampling from ``os.urandom``
  (Canonne, Kamath & Steinke 2020), vectorised.
* :mod:`secagg.dp.accounting`: ρ-zCDP per round, (ε, δ) over a run, per-rule
  sensitivity, ``secagg dp plan``'s calibration, server A's ledger.
* :mod:`secagg.dp.mechanism`: the exact norm bound and each server's noise in ring
  units, and the SDK's clipping.
* :mod:`secagg.dp.cli`: the ``secagg dp plan`` subcommand.

No CrypTen or torch here: the 2PC steps are :meth:`secagg.mpc.MpcSession.at_most` and
the ``noise`` arguments of the reveals, driven by :mod:`secagg.protocol`.
"""
