"""Ready-made federated apps shipped with Consortium (used by `consortium demo`)."""
