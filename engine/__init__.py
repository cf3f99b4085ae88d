"""The training loop: SCCAN's trainer (``trainer``), BAM's base learner (``base_trainer``), the
optimizers and the poly learning-rate schedule (``optimization``) and the choice of the best
checkpoint (``best_checkpoint``). The top layer of the library, used by the two training scripts."""
