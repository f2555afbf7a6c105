"""A live widget in a cell's output, replaced by a static picture of itself when it stops.

The Dashboard and the ControlPanel are shown under a display id; when they close (or freeze),
the same output is updated in place with a plain mimebundle (PNG/HTML/text), which is what a
saved notebook keeps once the kernel and its widget state are gone.

    >>> show(widget._repr_mimebundle_(), None, display_id)      # doctest: +SKIP
    >>> replace_output({'text/plain': 'stopped'}, display_id)    # doctest: +SKIP
"""
from __future__ import annotations

from typing import Any, Dict, Optional


def show(live: Dict[str, Any], picture: Optional[Dict[str, Any]], display_id: str) -> None:
    """Display the live widget's bundle under ``display_id``; once there is a picture, that instead."""
    from IPython.display import display
    if picture is not None:
        display(picture, raw=True)
    else:
        display(live, raw=True, display_id=display_id)


def replace_output(bundle: Dict[str, Any], display_id: str) -> None:
    """Put ``bundle`` where the output ``display_id`` is; nothing outside IPython (where
    ``update_display`` would print) or when there is no display to update any more."""
    try:
        from IPython import get_ipython
        from IPython.display import update_display
        if get_ipython() is not None:
            update_display(bundle, raw=True, display_id=display_id)
    except Exception:   # no display to update (not in IPython any more)
        pass
