"""Planning: the cells of a run, each cell's resolved per-layer plan, and the typed result a cell ends with.

``cells`` (what a cell is), ``status`` (what a finished cell is stored as) and ``result`` (what it hands to the
store, and the store interface the run layer writes through) are torch-free data; ``planner`` expands a
configuration into cells, looking at the built models' layers.
"""
