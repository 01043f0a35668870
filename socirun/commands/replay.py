"""`socirun replay FILE`: a recorded event stream shown again in any face."""

from __future__ import annotations

import argparse

from socirun.config import SocirunConfig
from socirun.errors import UsageError


def replay_command(args: argparse.Namespace, config: SocirunConfig) -> int:
    from socirun.ui.progress import progress_mode_for
    from socirun.ui.replay import replay

    if args.speed is not None and args.speed < 0:
        raise UsageError(f"invalid --speed {args.speed}: give 0 (no waiting) or a positive factor")
    return replay(args.file, progress_mode_for(args.progress, config), speed=args.speed)
