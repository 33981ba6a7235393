"""Matplotlib figures of results; every function returns a `matplotlib.figure.Figure`.

- `keras_transfer.plotting.training`: training curves, confusion matrix,
  prediction grid, feature maps of a backbone layer.
- `keras_transfer.plotting.visualization`: ideal-class images and their
  optimization history.
- `keras_transfer.plotting.adversarial`: original | adversarial |
  perturbation | top-5 panels, robust accuracy versus epsilon.
- `keras_transfer.plotting.explain`: heat-map overlays, a method-comparison
  panel, deletion/insertion curves.
"""
