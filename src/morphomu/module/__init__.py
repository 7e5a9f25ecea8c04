"""Torch modules holding the tensors and the losses (no AnnData here)."""
