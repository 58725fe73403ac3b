"""Federated distillation on Flower: clients share top-k soft labels on a public set, not data."""
