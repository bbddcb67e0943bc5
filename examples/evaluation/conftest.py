"""The suite's fixture; data and bounds are in cases.py."""

from typing import Any, Dict, List

import pytest

from cases import EXAMPLES, ask, senses


@pytest.fixture(scope="session")
def translation_rows(ft_tokenizer: Any) -> List[Dict[str, Any]]:
    return [{**ask(ft_tokenizer, e["zh"]), "reference": senses(e["en"])} for e in EXAMPLES[:64]]
