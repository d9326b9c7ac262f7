"""Retrospective campaigns: a labelled table as the oracle, to measure policies without DFT."""
