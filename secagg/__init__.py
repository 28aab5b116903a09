"""secagg: secure two-server Byzantine-robust aggregation.

Importing this package is cheap and never imports CrypTen or torch: the worker SDK
(``clients/``) depends on ``secagg.encoding``, ``secagg.sharing`` and the generated
wire code only. Everything that touches CrypTen lives in :mod:`secagg.mpc`.
"""

__version__ = "0.1.0"
