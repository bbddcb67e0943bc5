"""The packaged CC-CEDICT sample and its loader."""

import json
import os
import re

import pytest

from ferrotune import datasets
from ferrotune.datasets import CEDICT_ATTRIBUTION, load_cedict_sample

PKG_DIR = os.path.dirname(datasets.__file__)
SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "cedict_zh_en.jsonl")


def test_sample_shape_and_fields():
    rows = load_cedict_sample()
    assert len(rows) == 3000
    for r in rows:
        assert set(r) == {"zh", "zh_traditional", "pinyin", "en"}
        assert re.fullmatch(r"[\u4e00-\u9fff]{1,2}", r["zh"])
        assert isinstance(r["en"], list) and r["en"] and all(isinstance(e, str) for e in r["en"])
    assert len({r["zh"] for r in rows}) == 3000  # one entry per simplified form
    zh = {r["zh"]: r for r in rows}
    assert "water" in zh["水"]["en"]
    assert zh["大学"]["en"][0] == "university"


def test_limit():
    assert load_cedict_sample(limit=5) == load_cedict_sample()[:5]
    assert load_cedict_sample(limit=0) == []
    with pytest.raises(ValueError):
        load_cedict_sample(limit=-1)


def test_attribution_ships_next_to_the_data():
    readme = open(os.path.join(PKG_DIR, "README.md"), encoding="utf-8").read()
    assert "CC-CEDICT" in readme and "https://cc-cedict.org/wiki/" in readme
    assert "CC BY-SA 4.0" in readme
    assert "CC BY-SA 4.0" in CEDICT_ATTRIBUTION


@pytest.mark.skipif(not os.path.exists(SHARED), reason="../shared/data/cedict_zh_en.jsonl is not present")
def test_sample_is_verbatim_lines_of_the_full_dictionary():
    with open(SHARED, encoding="utf-8") as f:
        full = f.read().splitlines()
    with open(os.path.join(PKG_DIR, datasets.CEDICT_SAMPLE_FILE), encoding="utf-8") as f:
        sample = f.read().splitlines()
    index = {line: i for i, line in enumerate(full)}
    positions = [index[line] for line in sample]  # KeyError if any line was altered
    assert positions == sorted(positions)  # dictionary order kept
    assert json.loads(sample[0]) == json.loads(full[positions[0]])
