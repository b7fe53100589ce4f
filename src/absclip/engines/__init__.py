"""Engines that run methods over data sets: the local loop (default), results documents, Ray Data."""
