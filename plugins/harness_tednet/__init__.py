"""Placeholder: the tednet backend plugin is being written."""
