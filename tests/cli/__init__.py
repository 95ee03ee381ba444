"""Tests of the ringkv command line."""
