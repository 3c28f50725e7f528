"""Test-only copies of the few model-zoo layers the tests need, written from reading each repository's code.

Never imported by the package: they stand in for the zoo's own code when checking what a converted file computes.
"""
