"""Companion tools around the serving pipe: player, listener, relay, naive loop, bench, demo.

They may import `brainformer_rt.serving`; the pipe never imports them.
"""
