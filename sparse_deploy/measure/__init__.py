"""Measurement: timing, memory, MACs, the method comparison, and the report built from their results.

One module per measurement (``python -m sparse_deploy.bench`` runs them, :mod:`.cli`):

==================  ===========================================================================
``timing``          the one timing function (CUDA events or ``perf_counter``), interleaving, statistics
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

Submodules import torch, ONNX and the backends lazily: importing this package needs no GPU.
"""
