"""Fuzz targets for the parsers that meet hostile input (see fuzz/targets.py and
docs: ``python -m fuzz --help``)."""
