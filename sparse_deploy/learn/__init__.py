"""Training: everything only a training run uses, above the shared model layer.

==================  ===========================================================================
``train``           the loop: dense pretraining and sparse fine-tuning, resume, EMA, distillation
``config``          :class:`TrainConfig`: a run's settings, defaults filled in by ``validate()``
``cli``             the flags of ``python -m sparse_deploy.train`` onto a config, and ``main``
``datasets``        Fashion-MNIST, image folders, cached VAE latents, synthetic tensors
``masking``         how masked layers train: SR-STE / STE, learned pattern logits, mask updates
``reconstruct``     calibrated mask starts: Wanda, SparseGPT (``--mask-init``)
``layer_choice``    which selected layers stay dense: ``--latency-profile``, ``--macs-budget``
``sensitivity``     per-layer masking sensitivity, the choice that meets a MACs budget
``resume``          a run's identity, resuming without mixing runs, the metrics log
``distributed``     torchrun: the device of each rank, DDP, the global batch split
``diffusers_out``   a run's model out as a diffusers folder (``save_pretrained``)
==================  ===========================================================================

The shared layer below (presets, models, masks, sparsify, checkpoint, schedule, sampling) is what
export, build, run and measure use too; nothing there imports from here.
"""
