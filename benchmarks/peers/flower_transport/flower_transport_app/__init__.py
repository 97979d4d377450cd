"""Flower side of the transport benchmark (see ``benchmarks/transport.py``)."""
