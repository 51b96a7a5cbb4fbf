"""Placeholder: filled in by this family's issue."""

assets: list = []
asset_checks: list = []
jobs: list = []
