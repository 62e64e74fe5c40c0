"""Library patches, one module each, naming the library versions each was written against.

Each patch is applied explicitly by the code that needs it and has a test of its own.
"""
