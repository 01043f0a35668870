"""Renderers: every face of the same typed event stream. Nothing here talks to containerd."""
