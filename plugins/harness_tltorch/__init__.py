"""Placeholder: the tltorch backend plugin is being written."""
