"""Placeholder: filled in by this family's issue."""

schedules: list = []
