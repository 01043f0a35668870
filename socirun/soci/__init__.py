"""SOCI snapshotter: its constants, its config file, and an observer of what it exposes."""
