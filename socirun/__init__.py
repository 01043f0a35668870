"""socirun: a drop-in for `nerdctl run` / `docker run` that makes big-image cold starts fast and visible."""

__version__ = "0.1.0"
