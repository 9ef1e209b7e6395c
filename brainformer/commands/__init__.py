"""The typer/rich/matplotlib layer of `brainformer`: one module per command.

Each module holds the command's options and its presentation (tables, plots); the work is done
by the library modules (`brainformer.data`, `brainformer.training`, `brainformer.evaluation`,
`brainformer.simulation`).
"""
