"""Helpers the tests share that are not fixtures (those are in conftest.py): tiny sweep
files and the sweep CLI in a subprocess, a real MLflow server and Chromium, TFRecord
encoding."""
