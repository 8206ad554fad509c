"""Datasets: Arrow shards and the built-in synthetic colored multi-dSprites."""
