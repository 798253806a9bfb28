"""The cascade (3d_lowres -> 3d_cascade_fullres): the previous stage's segmentation as input."""
