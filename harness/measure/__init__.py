"""Measurement: parameters, FLOPs, errors, latency timing primitives, stability over epochs.
"""
