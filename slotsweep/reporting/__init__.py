"""A sweep's report, read back from MLflow: the HTML page, the Markdown tables.

The command line is slotsweep/report.py (`python -m slotsweep.report NAME`).
"""
