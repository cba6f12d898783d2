"""Execution: the session, the runner of one cell, executors, training, the baseline cache, the quiet
latency phase, networks on disk, export, data and models, the plugin host.
"""
