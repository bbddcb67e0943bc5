"""Small data sets shipped inside the package, so examples run without downloads.

``load_cedict_sample()`` returns 3,000 Chinese→English dictionary entries from
CC-CEDICT (CC BY-SA 4.0; see ``README.md`` in this directory for the attribution and
how the sample was drawn).
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, Dict, List, Optional

__all__ = ["load_cedict_sample", "CEDICT_SAMPLE_FILE", "CEDICT_ATTRIBUTION"]

#: File name of the CC-CEDICT sample inside this package.
CEDICT_SAMPLE_FILE = "cedict_zh_en_sample.jsonl"

#: Attribution to show wherever the sample's content is redistributed.
CEDICT_ATTRIBUTION = (
    "CC-CEDICT (https://cc-cedict.org/wiki/), licensed under Creative Commons "
    "Attribution-ShareAlike 4.0 (CC BY-SA 4.0)"
)


def load_cedict_sample(limit: Optional[int] = None) -> List[Dict[str, Any]]:
    """The packaged CC-CEDICT sample as a list of dicts.

    Each entry looks like
    ``{"zh": "水", "zh_traditional": "水", "pinyin": "shui3", "en": ["water", "river", ...]}``
    (the fields of the full ``cedict_zh_en.jsonl``), in dictionary order.

    Args:
        limit: return only the first ``limit`` entries.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    text = resources.files(__name__).joinpath(CEDICT_SAMPLE_FILE).read_text(encoding="utf-8")
    rows: List[Dict[str, Any]] = []
    for line in text.splitlines():
        if limit is not None and len(rows) >= limit:
            break
        if line.strip():
            rows.append(json.loads(line))
    return rows
