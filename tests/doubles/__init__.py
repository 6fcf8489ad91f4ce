"""Loopback HTTP doubles of the NHN Cloud services we cannot run here (CDN API and edge, Log & Crash)."""
