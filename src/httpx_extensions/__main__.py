"""``python -m httpx_extensions``: the ``httpx-extensions`` command line."""

from __future__ import annotations

from ._cli import main

if __name__ == "__main__":
    main()
