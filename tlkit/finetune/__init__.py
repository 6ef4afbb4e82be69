"""Fine-tuning (``mode: finetune``): the backbone and a new linear classifier trained end to end.

:mod:`~tlkit.finetune.settings` (the recipe section), :mod:`~tlkit.finetune.augment` (training
transforms from the backbone's preprocessing), :mod:`~tlkit.finetune.parts` (strategies: what
trains), :mod:`~tlkit.finetune.optim` (optimiser, schedule), :mod:`~tlkit.finetune.checkpoint`
(resumable state), :mod:`~tlkit.finetune.trainer` (the loop) and :mod:`~tlkit.run.finetune_stage`
(the engine's stage). Only the settings are imported here: the recipe reader needs them, and the
training code loads when a fine-tuning run starts.
"""

from tlkit.finetune.settings import AugmentSettings, FinetuneSettings

__all__ = ["AugmentSettings", "FinetuneSettings"]
