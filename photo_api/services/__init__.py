"""Use cases: plain functions over a session and explicit collaborators; no Flask here."""
