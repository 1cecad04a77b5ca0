"""Datasets in ZeroShape's layout (see :mod:`zsw.data.layout`)."""
