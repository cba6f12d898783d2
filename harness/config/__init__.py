"""Configuration: the run's settings, --mix specs and tensorized-shape labels, and the presets.
"""
