"""Image models: resizing and augmentation, class balance, the dataset and loaders, backbones and the fusion
network, and training and inference of one fold."""
