"""sparse-deploy: 2:4-sparse diffusion models, from SR-STE fine-tuning to TensorRT and Triton.

Stages, over a shared model layer (``presets``, ``models``, ``modes``, ``sparsify``, ``checkpoint``):
learn (``learn``; ``python -m sparse_deploy.train``), export (``export``), build (``build``), run and
measure (``run``, ``bench``, ``fid``), serve (``triton``). docs/ARCHITECTURE.md draws the layers.
Importing the package pulls in no GPU library; hardware-bound modules declare theirs with
:func:`sparse_deploy.lazy.lazy_import`.
"""

__version__ = "0.1.0"
