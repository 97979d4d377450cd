"""Central DP (DP-FedAvg) around the heart-disease app (see the app module)."""
