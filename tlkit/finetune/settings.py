"""The recipe's ``finetune:`` section: how the backbone and a new classifier train end to end.

Defaults follow the PyTorch transfer-learning tutorial's fine-tuning (SGD, momentum 0.9, lr 1e-3,
step decay x0.1 every 7 epochs, random resized crop + horizontal flip) so people coming from it
find what they know; the ants/bees recipe overrides what measurements on a 2-core CPU argued for
(see docs/finetune.md; the figures are in benchmarks/README.md). Every field is plain data: it is validated by the same
pydantic path as plugin options and saved with the run and in every checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

from annotated_types import Ge, Gt, Le, Lt
from pydantic import AfterValidator

AUTO_AUGMENT_FORMS = "'rand-m9-mstd0.5' (RandAugment), 'augmix-m5-w4-d2' (AugMix), 'original', 'originalr', 'v0', 'v0r' or '3a' (AutoAugment policies)"


def check_auto_augment(policy: str) -> str:
    """``policy`` if timm's own parser builds it (a dummy call, no image): refused while the recipe is read, not mid-run."""
    from timm.data.auto_augment import augment_and_mix_transform, auto_augment_transform, rand_augment_transform

    build = rand_augment_transform if policy.startswith("rand") else augment_and_mix_transform if policy.startswith("augmix") else auto_augment_transform
    try:
        build(policy, {"translate_const": 100, "img_mean": (124, 116, 104)})
    except Exception:  # noqa: BLE001 - timm says no with AssertionError, ValueError, KeyError...
        raise ValueError(f"not a timm auto-augment policy; use {AUTO_AUGMENT_FORMS}, or null for none") from None
    return policy


Strategy = Literal["full", "freeze", "freeze_then_unfreeze", "last_stages"]


@dataclass(frozen=True)
class AugmentSettings:
    """Training-time augmentation (``finetune.augment``), built by timm's ``create_transform(is_training=True)``."""

    scale: tuple[Annotated[float, Gt(0), Le(1)], Annotated[float, Gt(0), Le(1)]] = field(
        default=(0.08, 1.0), metadata={"help": "random resized crop: range of the crop's area as a fraction of the image"}
    )
    ratio: tuple[Annotated[float, Gt(0)], Annotated[float, Gt(0)]] = field(
        default=(3 / 4, 4 / 3), metadata={"help": "random resized crop: range of the crop's aspect ratio"}
    )
    hflip: Annotated[float, Ge(0), Le(1)] = field(default=0.5, metadata={"help": "probability of a horizontal flip"})
    vflip: Annotated[float, Ge(0), Le(1)] = field(default=0.0, metadata={"help": "probability of a vertical flip"})
    color_jitter: Annotated[float, Ge(0), Le(1)] = field(default=0.0, metadata={"help": "brightness/contrast/saturation jitter (0 = off)"})
    auto_augment: Annotated[str, AfterValidator(check_auto_augment)] | None = field(default=None, metadata={"help": "timm auto-augment policy, e.g. 'rand-m9-mstd0.5' (null = off)"})
    enabled: bool = field(default=True, metadata={"help": "false: train on the evaluation transform (no augmentation)"})


@dataclass(frozen=True)
class FinetuneSettings:
    """The ``finetune:`` section (used when ``mode: finetune``)."""

    strategy: Strategy = field(
        default="full",
        metadata={"help": "full | freeze (classifier only) | freeze_then_unfreeze | last_stages (the last `stages` stages + classifier)"},
    )
    epochs: Annotated[int, Ge(1), Le(10_000)] = field(default=25, metadata={"help": "passes over the training images"})
    batch_size: Annotated[int, Gt(0), Le(4096)] = field(default=16, metadata={"help": "images per optimiser step"})
    optimizer: Literal["sgd", "adamw"] = field(default="sgd", metadata={"help": "sgd (momentum) or adamw"})
    lr: Annotated[float, Gt(0), Le(10)] = field(default=1e-3, metadata={"help": "learning rate of the classifier"})
    backbone_lr: Annotated[float, Ge(0), Le(10)] | None = field(
        default=None, metadata={"help": "learning rate of the backbone (null = lr; freeze_then_unfreeze: lr / 10)"}
    )
    momentum: Annotated[float, Ge(0), Lt(1)] = field(default=0.9, metadata={"help": "SGD momentum"})
    weight_decay: Annotated[float, Ge(0), Le(10)] = field(default=0.0, metadata={"help": "weight decay (decoupled for adamw)"})
    schedule: Literal["step", "cosine", "constant"] = field(default="step", metadata={"help": "learning-rate schedule"})
    step_epochs: Annotated[int, Ge(1), Le(10_000)] = field(default=7, metadata={"help": "step schedule: decay every N epochs"})
    gamma: Annotated[float, Gt(0), Le(1)] = field(default=0.1, metadata={"help": "step schedule: decay factor"})
    warmup_epochs: Annotated[float, Ge(0), Le(10_000)] = field(default=0.0, metadata={"help": "linear warm-up (epochs, may be fractional)"})
    unfreeze_epoch: Annotated[int, Ge(1), Le(10_000)] = field(
        default=1, metadata={"help": "freeze_then_unfreeze: epochs of classifier-only training before the backbone joins"}
    )
    stages: Annotated[int, Ge(1), Le(1000)] | None = field(
        default=None, metadata={"help": "last_stages (and freeze_then_unfreeze): how many of the backbone's last stages train (null = all)"}
    )
    train_bn: bool = field(default=False, metadata={"help": "update batch-norm statistics (off: small batches would spoil them)"})
    grad_clip: Annotated[float, Gt(0)] | None = field(default=None, metadata={"help": "clip the gradient norm to this value (null = off)"})
    precision: Literal["auto", "fp32", "bf16", "fp16"] = field(
        default="auto", metadata={"help": "training autocast: auto = fp32 on CPU, bf16 (or fp16 + grad scaling) on CUDA"}
    )
    device: Literal["auto", "cpu", "cuda", "mps"] = field(default="auto", metadata={"help": "where training runs"})
    val_fraction: Annotated[float, Ge(0), Lt(1)] = field(
        default=0.0, metadata={"help": "stratified part of the train split held out to choose the best epoch (0 = keep the last)"}
    )
    eval_test: bool = field(default=True, metadata={"help": "report test accuracy after every epoch (progress only, never a choice)"})
    workers: Annotated[int, Ge(0), Le(64)] | None = field(default=None, metadata={"help": "decoding worker processes (null = chosen for this machine)"})
    threads: Annotated[int, Ge(1), Le(256)] | None = field(
        default=None,
        metadata={"help": "intra-op threads while training (null = torch's default); 1 is much faster on a machine whose cores are busy"},
    )
    deterministic: bool = field(default=True, metadata={"help": "deterministic kernels: a resumed run ends with bitwise the same weights on CPU"})
    augment: AugmentSettings = field(default_factory=AugmentSettings, metadata={"help": "training augmentation"})

    def effective_backbone_lr(self) -> float:
        """The backbone's learning rate once it trains."""
        if self.backbone_lr is not None:
            return self.backbone_lr
        return self.lr / 10 if self.strategy == "freeze_then_unfreeze" else self.lr
