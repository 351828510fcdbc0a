"""Measurement: timing, memory, MACs, the method comparison, and the report built from their results.

One module per measurement (``python -m sparse_deploy.bench`` runs them, :mod:`.cli`), each timed
with :mod:`sparse_deploy.timing` (the one timing function, shared with the GEMM profile and the GPU kit):

==================  ===========================================================================
``machine``         what a measurement ran on, process and engine memory, artifact sizes, the result record
``engine_latency``  dense vs sparse engine latency per denoiser call and end to end
``recipes``         the compared sparsification methods and the training config of each
``train_cost``      seconds per fine-tuning step of each method
``macs_check``      model MACs cross-checked against the exported graph
``methods``         the method comparison (FID, KID) at an equal fine-tuning budget
``grids``           sample grids of several engines from the same seed
``report``          ``report.json`` and ``report.md`` from the results in a folder
``plots``           the report's figures
``frontier``        FID against effective MACs across ``--macs-budget`` levels (or against ``--steps`` budgets)
``merge``           comparisons of one protocol run at different times joined into one
==================  ===========================================================================

The package sits above training (the method comparison trains each method): see docs/ARCHITECTURE.md,
"Layers". Importing it needs no GPU library.
"""
