"""sparse-deploy: 2:4-sparse diffusion models, from SR-STE fine-tuning to TensorRT and Triton.

Stages (one module each): learn (``sparsify``, ``train``), export (``export``), build
(``build``), run and measure (``run``, ``bench``, ``fid``), serve (``triton``).
Importing the package pulls in no GPU library; hardware-bound modules import theirs lazily.
"""

__version__ = "0.1.0"
