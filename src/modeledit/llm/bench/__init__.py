"""Benchmarks for language-model editing: loaders and metrics."""
