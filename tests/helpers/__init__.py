"""Helpers shared by the tiers of one topic's tests."""
