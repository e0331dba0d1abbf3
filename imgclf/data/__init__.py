"""Datasets: image folders, decoding, pixel pipelines, content hashes, the demo digits."""
