"""Training one model: the shared loop (`loop.fit`) and the feature-prediction probe.

Pure PyTorch: no Ray and no MLflow here (DESIGN.md); results leave through callbacks.
"""
