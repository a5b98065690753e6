"""Progress bars on stderr, hidden when stderr is not a terminal."""

import sys
from collections.abc import Callable


def progress_bar(total: int, desc: str, unit: str) -> Callable[[], None]:
    """Start a bar and return a callback that advances it by one; it closes itself on the last item."""
    from tqdm import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=None, dynamic_ncols=True)
    if total == 0:
        bar.close()

    def tick() -> None:
        bar.update(1)
        if bar.n >= total:
            bar.close()

    return tick
