"""Performance comparisons of pyrofail, each a ratio against a baseline run in the same command.

Run ``python -m benchmarks --help``. Nothing here is imported by the package or the tests.
"""
