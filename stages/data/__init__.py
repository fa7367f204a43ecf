"""Datasets: sources for `prepare`, ImageFolders in and out, batched augmentation."""
