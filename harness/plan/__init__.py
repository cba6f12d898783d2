"""Planning: the cells of a run and each cell's resolved per-layer plan.
"""
