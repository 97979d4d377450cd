"""The transport benchmark's app (see ``benchmarks/transport.py``)."""
