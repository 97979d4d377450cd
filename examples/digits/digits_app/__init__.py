"""Digits with Dirichlet label skew: a numpy MLP trained with FedAvg."""
