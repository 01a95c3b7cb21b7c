"""The sections of the image models: train_cnn, its models and their augmentation, balancing,
fusion and early stopping, and the minority set."""
from __future__ import annotations

from typing import Literal, get_args

from pydantic import Field, field_validator, model_validator

from lesion_ml.config.base import Section


class AugmentConfig(Section):
    """Training augmentation: each value is the probability of that family (0 turns it off)."""

    flip: float = Field(0.5, ge=0, le=1, description="horizontal and vertical flips")
    rotate90: float = Field(0.5, ge=0, le=1, description="90-degree turns and transposes")
    affine: float = Field(0.5, ge=0, le=1, description="rotate +-45 deg, scale 0.85-1.15, shift +-6%")
    brightness_contrast: float = Field(0.5, ge=0, le=1, description="random brightness and contrast")
    hue_saturation: float = Field(0.3, ge=0, le=1, description="random hue, saturation and value shifts")
    blur_noise: float = Field(0.2, ge=0, le=1, description="Gaussian/motion blur or Gaussian noise")
    dropout: float = Field(0.2, ge=0, le=1, description="coarse dropout: 1-4 black rectangles")
    hair: float = Field(0.0, ge=0, le=1, description="dark hair-like curves drawn over the lesion")
    zoom_out: float = Field(0.0, ge=0, le=1, description="shrink the image to 50-90% on a canvas of its border "
                            "colour: the lesion seen from further away, as other dermatoscopes frame it")
    frame: float = Field(0.0, ge=0, le=1, description="black outside a circle: the round field of view of "
                         "contact dermatoscopes")


class BalanceConfig(Section):
    """How the rare malignant class is weighted (see lesion_ml/image/balance.py)."""

    sampler: Literal["none", "weighted", "downsample"] = Field(
        "none", description="what an epoch draws: none: every row, shuffled; weighted: with replacement, "
        "neg_per_pos negatives per positive expected; downsample: every positive plus a fresh random subset of "
        "negatives")
    neg_per_pos: float = Field(10.0, gt=0, description="negatives per positive an epoch draws "
                               "(weighted: expected; downsample: all positives + this many negatives each)")
    loss: Literal["bce", "focal"] = Field("bce", description="binary cross-entropy or focal loss")
    focal_gamma: float = Field(2.0, ge=0, description="the focal loss's focusing exponent (loss focal)")
    pos_weight: float | Literal["auto"] = Field("auto", description="positive-class loss weight (> 0); auto: "
                                                "negatives/positives with sampler none, else 1")
    minority_set: bool = Field(False, description="add the augmented copies of the training positives "
                                                  "(train_cnn.minority_set)")

    @field_validator("pos_weight")
    @classmethod
    def _positive(cls, v: float | str) -> float | str:
        if not isinstance(v, str) and v <= 0:
            raise ValueError("pos_weight must be 'auto' or a number > 0")
        return v


class FusionConfig(Section):
    """Image + metadata: backbone features joined with an MLP over the fold's selected features."""

    enabled: bool = Field(False, description="feed the fold's selected metadata features to the model too; the "
                          "model then needs metadata to predict")
    hidden: int = Field(64, ge=1, description="width of the metadata MLP")
    dropout: float = Field(0.2, ge=0, lt=1, description="dropout of the metadata MLP")


class EarlyStoppingConfig(Section):
    """Stop when the metric on a patient-grouped holdout of the training rows stops improving;
    the best epoch's weights predict the validation fold (which never steers training)."""

    metric: Literal["none", "auc", "pauc"] = Field("none", description="none: train every epoch; auc: ROC-AUC; "
                                                   "pauc: partial AUC above 80% sensitivity, on the holdout")
    patience: int = Field(3, ge=1, description="epochs without improvement before training stops")
    holdout: float = Field(0.1, gt=0, lt=0.5, description="share of training patients held out")


BackboneName = Literal["resnet18", "resnet34", "resnet50", "efficientnet-b0", "efficientnet-b1", "efficientnet-b2",
                       "efficientnet-b3", "efficientnet-lite0"]
BACKBONE_NAMES: tuple[str, ...] = get_args(BackboneName)  # lesion_ml.image.backbones.REGISTRY builds each one
BENCH_BACKBONES = ("resnet18", "resnet50", "efficientnet-b0", "efficientnet-lite0")  # lesion bench all's default


class CnnModelConfig(Section):
    """One entry of train_cnn.models (a DVC foreach item)."""

    backbone: BackboneName = Field("resnet18", description="the network")
    pretrained: Literal["auto", "true", "false"] = Field(
        "false", description="ImageNet weights, never downloaded: true: load them (an error naming the file when "
        "absent); auto: load them when present, else random weights; false: random weights. efficientnet-lite0's "
        "weights come with its package, so true works on any machine")
    image_size: int = Field(64, ge=16, description="side of the square network input in pixels")
    resize: Literal["squash", "pad", "crop"] = Field("squash", description="squash: resize to a square; pad: "
                                                     "keep the aspect, pad the short side; crop: centre square")
    colour_constancy: Literal["none", "shades_of_grey"] = Field(
        "none", description="shades_of_grey: Shades of Grey colour normalisation (Minkowski p=6) of every image, "
        "in training, prediction and explanation alike")
    epochs: int = Field(4, ge=1, description="training epochs per fold")
    batch_size: int = Field(64, ge=2, description="at least 2: BatchNorm layers cannot train on one image")
    eval_batch_size: int | None = Field(None, ge=1, description="images per batch when predicting (holdout, "
                                        "validation, out-of-fold); null: twice batch_size")
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    weight_decay: float = Field(1e-4, ge=0, description="weight decay of the optimiser")
    schedule: Literal["onecycle", "cosine"] = Field("onecycle", description="learning-rate schedule: onecycle: "
                                                    "warm up to lr, then decay; cosine: cosine decay from lr")
    warmup_epochs: int = Field(0, ge=0, description="first epochs train the head only (backbone frozen); below "
                               "epochs")
    backbone_lr_mult: float = Field(1.0, gt=0, le=1, description="backbone lr = lr x this (discriminative lr)")
    augment: AugmentConfig = AugmentConfig()
    balance: BalanceConfig = BalanceConfig()
    fusion: FusionConfig = FusionConfig()
    early_stopping: EarlyStoppingConfig = EarlyStoppingConfig()
    ema_half_life: float = Field(0.0, ge=0, description="keep an exponential moving average of the weights with this "
                                 "half-life in epochs, and score, keep and export the average instead of the "
                                 "last weights; 0: off")
    tta: bool = Field(False, description="score the validation fold (so the out-of-fold metrics and threshold) and "
                      "new images as the mean over the 8 flips and quarter turns of each image")
    monitor_valid: bool = Field(False, description="also score the validation fold after every epoch "
                                                   "(for the plots only; never used to choose anything)")
    seed: int = Field(42, description="random seed; fold k trains with seed + k")

    @model_validator(mode="after")
    def _warmup(self) -> CnnModelConfig:
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"warmup_epochs ({self.warmup_epochs}) must be below epochs ({self.epochs})")
        return self


class MinoritySetConfig(Section):
    """Augmented copies of every malignant image, written once (DVC-cached) and used by the
    models whose balance.minority_set is true (only copies of their training positives)."""

    copies: int = Field(0, ge=0, description="augmented copies per malignant image; 0: none")
    max_side: int = Field(256, ge=16, description="copies are stored with at most this many pixels a side")
    augment: AugmentConfig = AugmentConfig(flip=0.5, rotate90=0.75, affine=0.9, brightness_contrast=0.7,
                                           hue_saturation=0.5, blur_noise=0.3, dropout=0.0, hair=0.2)
    seed: int = Field(7, description="random seed of the copies' augmentation")


class TrainCnnConfig(Section):
    """The image models (stage `train_cnn@<name>`, one per entry of `models`), trained fold by fold."""

    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where the image models train and "
                                                   "predict; auto: CUDA when present, else the CPU")
    num_workers: int = Field(0, ge=0, description="image-loading worker processes; 0: load in the training process")
    threads: int = Field(0, ge=0, description="torch CPU threads; 0 keeps torch's default")
    checkpoint_every_s: float = Field(
        60.0, ge=0, description="the least seconds between two mid-training checkpoints of a fold (written at the "
        "end of an epoch; a killed run resumes from the last); 0: after every epoch. The weights do not depend on it")
    minority_set: MinoritySetConfig = MinoritySetConfig()
    models: dict[str, CnnModelConfig] = Field(default_factory=lambda: {"resnet18": CnnModelConfig()},
                                              description="the image models, by name; each is trained, evaluated "
                                              "and may be exported")
