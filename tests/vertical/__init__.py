"""Vertical federated learning tests: PSI and vertical models."""
