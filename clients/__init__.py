"""Client libraries for secagg: the worker SDK (:mod:`clients.sdk`) and the operator's
admin client (:mod:`clients.admin`).

Importing them never imports torch or CrypTen; only the SDK's model helpers import
torch, on first use.
"""

from clients.sdk import SecAggClient, SecAggClientError, SubmissionReceipt

__all__ = ["SecAggClient", "SecAggClientError", "SubmissionReceipt"]
