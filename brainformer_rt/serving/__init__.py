"""The serving pipe, one stage a module: inlet → adapt → preprocess → ring buffer → windower →
engine → publishers; `pipeline` runs one stream through them, `scheduler` the loops, `app` the
start-up wiring. See docs/internals.md for the map.
"""
