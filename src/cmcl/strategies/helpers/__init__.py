"""What methods build on that is not a method: the replay memories of ER, DER, DER++, GEM,
A-GEM and Co²L with the per-step generator of their draws, which COMM and EWC use too
(replay.py), and COMM's adapter pools and relevance routers (adapters.py).

A subpackage of cmcl.strategies rather than a top-level cmcl module: only strategies (and the
resources table, which counts what a memory stores) use them, and the method catalog's cache
key (cmcl.catalog.sources_key) already covers every file under strategies/. The registry
imports the package's modules only, never its subpackages, so nothing here is taken for a
method (Mammoth keeps its buffer in utils/, apart from models/, for the same reason).
"""
