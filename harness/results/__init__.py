"""Results: the store, aggregation, comparison of runs, findings and plots.
"""
