"""Workarounds for the environments gendistill runs in."""
