"""Layer 7: the pipeline: the stage table (stages), the files generated from it (generate), the
runner every stage script starts (runner), the sweep, and each stage's function (one module per
group of stages that run the same code: each stage's code dependencies are the import closure of
its module). A stage function takes the validated Params and returns its one-line summary.
Only the `s5cl` command imports this package; the library below never does.
"""
