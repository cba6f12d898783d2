"""Tensor maths written once: CP-ALS, unfoldings, the stock factorised structures, tensorized shapes, spectra.
"""
