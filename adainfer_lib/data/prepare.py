"""Set-up step: ``python -m adainfer_lib.data.prepare`` converts the offline model(s) and prepares the offline
task data under ``data/`` (or ``$ADAINFER_DATA``). Idempotent: what is already prepared and valid is kept."""

from __future__ import annotations

import argparse
import time

from ..model.loading import DEFAULT_MODEL, OFFLINE_MODELS, prepare_offline_model


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="*", default=[DEFAULT_MODEL], choices=sorted(OFFLINE_MODELS),
                        help=f"offline model aliases to convert (default: {DEFAULT_MODEL})")
    parser.add_argument("--force", action="store_true", help="rebuild even what is already prepared")
    args = parser.parse_args(argv)
    from .sources import prepare_sources

    for alias in args.models:
        start = time.perf_counter()
        folder = prepare_offline_model(alias, force=args.force)
        print(f"model {alias}: {folder} ({time.perf_counter() - start:.1f} s)")
    start = time.perf_counter()
    prepare_sources(force=args.force)
    print(f"task data: prepared ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
