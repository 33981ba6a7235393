"""Matplotlib figures of results; every function returns a `matplotlib.figure.Figure`."""
