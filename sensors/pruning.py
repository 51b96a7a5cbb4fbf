"""Placeholder: filled in by this family's issue."""

sensors: list = []
