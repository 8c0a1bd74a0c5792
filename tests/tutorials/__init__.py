"""Tests that run every tutorial step file, as the pages claim it behaves."""
