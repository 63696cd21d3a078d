"""Experiments: configs in, results JSON, tables and plots out."""
