"""The work of each stage: read its inputs, call the library, write its outputs atomically.

One module per group of stages that run the same code (each stage's code dependencies are the
import closure of its module: see s5cl.stages). Each function takes the validated Params and
returns the stage's one-line summary.
"""
