"""The typer/rich/matplotlib layer of `brainformer-rt`: one module per command.

Each module holds the command's options and its presentation (tables, plots); the work is done
by `brainformer_rt.serving` (the pipe) and `brainformer_rt.tools` (the companions).
"""
