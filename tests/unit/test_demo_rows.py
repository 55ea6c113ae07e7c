"""Demo rows: COPY text encoding and determinism (no database needed)."""

import datetime as dt
import hashlib

from wedsync_dr_dev import demo_data as demo
from wedsync_dr_dev.demo_data import _line


def test_copy_text_escapes_specials_and_nulls():
    assert _line(1, None, True, False, "a\tb\\c\nd") == "1\t\\N\tt\tf\ta\\tb\\\\c\\nd\n"


def test_generation_is_deterministic_for_a_seed():
    def digest(seed: int) -> str:
        gen = demo._Generator(demo.Scale(weddings=30, seed=seed), dt.date(2026, 6, 1))
        h = hashlib.sha256()
        for table in demo.TABLE_COLUMNS:
            for line in getattr(gen, table)():
                h.update(line.encode())
        return h.hexdigest()

    assert digest(1) == digest(1)
    assert digest(1) != digest(2)
