"""What the host and its plugins agree on: the backend declaration, the decompose request, the rank
selector's types and the budget rules.
"""
