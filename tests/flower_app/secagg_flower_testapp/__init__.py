"""Flower test app for tests/test_flower.py."""
