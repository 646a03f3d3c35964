"""Base classes that method families share (null_space.py: DNS, GPM, Adam-NSCL); no methods.

A subpackage of cmcl.strategies, as Mammoth keeps its shared model bases apart from the one-file
methods: a method file imports its base from here, never from another method's file, and the
registry (which imports the package's modules only) never takes a base for a method. Under
strategies/ so the method catalog's cache key (cmcl.catalog.sources_key) covers it. The math
itself (covariances, spectra, rank rules, projectors) stays in cmcl.subspace.
"""
