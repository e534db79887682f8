"""A development set and an external set from one labelled folder, split by scan size.

The raw brain MRI set mixes sources: its largest scans (a side of 500 px or more) come from
other scanners and exports than the small ones, so they stand in for "another site" when no
outside set is at hand. Files are copied, not linked: ``braintl`` does not follow links.

    python benchmarks/size_split.py ../shared/data/brain_mri /tmp/cpu-split
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from PIL import Image

SIDE = 500  # px: a scan whose larger side reaches this goes to the external set


def split_by_size(source: Path, dest: Path, side: int = SIDE) -> dict:
    """Copy ``source``'s label folders into ``dest/development`` and ``dest/external``;
    return the counts per part and label."""
    counts: dict[str, dict[str, int]] = {"development": {}, "external": {}}
    for label_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        for path in sorted(p for p in label_dir.iterdir() if p.is_file()):
            try:
                with Image.open(path) as image:
                    large = max(image.size) >= side
            except OSError:
                large = False  # unreadable: development, where braintl quarantines it
            part = "external" if large else "development"
            target = dest / part / label_dir.name
            target.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / path.name)
            counts[part][label_dir.name] = counts[part].get(label_dir.name, 0) + 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--side", type=int, default=SIDE)
    args = parser.parse_args()
    print(json.dumps(split_by_size(args.source, args.dest, args.side)))


if __name__ == "__main__":
    main()
