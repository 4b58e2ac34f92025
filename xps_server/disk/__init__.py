"""Disk: the file module and directory listings."""
