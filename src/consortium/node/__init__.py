"""The node process a silo runs beside its data."""
