"""Generated wire code for the ``secagg.v1`` protocol (``proto/secagg/v1/secagg.proto``).

Do not edit ``secagg_pb2*.py``: change the .proto and run ``python scripts/gen_proto.py``.
"""
