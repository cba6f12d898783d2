"""Core utilities: errors, atomic files, time limits, the allocator policy, the machine's resources.
"""
