"""Progress bars are tqdm's: its notebook widget in Jupyter (with ipywidgets), its text bar in
a terminal or in a notebook without ipywidgets::

    Training:  42%|████████▍           | 42/100 [00:13<00:18, 3.2step/s, loss=2.31, lr=4.2e-04]
"""

from __future__ import annotations

import sys
from typing import Any, Optional

from tqdm.std import tqdm as text_tqdm

__all__ = ["progress_bar"]


def in_notebook() -> bool:
    """True inside a Jupyter kernel (the test tqdm.auto uses)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
        return shell is not None and "IPKernelApp" in shell.config
    except Exception:
        return False


def progress_bar(
    total: Optional[int], desc: str = "", *, unit: str = "step", disable: bool = False, initial: int = 0, leave: bool = True
) -> Any:
    """A tqdm bar: ``tqdm.auto``'s choice without its warning when ipywidgets is missing (the
    text bar works in Jupyter too). There every text bar stays on one line: Jupyter's output
    area does not understand the cursor moves tqdm uses to stack nested bars (training and
    evaluation)."""
    cls: Any = text_tqdm
    extra = {}
    if in_notebook():
        try:
            import ipywidgets  # noqa: F401
            from tqdm.notebook import tqdm as cls
        except ImportError:
            extra["position"] = 0
    return cls(total=total, desc=desc or None, unit=unit, disable=disable, initial=initial, leave=leave, dynamic_ncols=True, **extra)
