"""Scores of predicted masks (FG-ARI, mBO, the stripe score) and the trivial baselines
that every sweep is judged against."""
