"""Reusable network blocks: attention, AdaLN, GEGLU, time embedding."""
