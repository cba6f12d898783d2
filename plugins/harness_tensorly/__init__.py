"""Placeholder: the tensorly backend plugin is being written."""
