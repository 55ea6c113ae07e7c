"""Plain-text tables for the terminal (`make run` prints one per run)."""

from __future__ import annotations

from collections.abc import Sequence


def human_bytes(n: int | float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def backup_summary(rows: Sequence[dict]) -> str:
    """One line per backup run: what it holds, its sizes through the pipeline, where it landed, how fast."""
    body = []
    for r in rows:
        seconds = r.get("seconds") or 0
        body.append([
            r["data_class"], r.get("status", "-"), r.get("objects", "-"), f"{r.get('rows') or 0:,}",
            f"{human_bytes(r.get('plaintext_bytes'))} -> {human_bytes(r.get('compressed_bytes'))} -> "
            f"{human_bytes(r.get('ciphertext_bytes'))}",
            " ".join(f"{c}:{s}" for c, s in sorted(r.get("copies", {}).items())) or "-",
            f"{seconds:.1f}s", f"{(r.get('plaintext_bytes') or 0) / 1e6 / seconds:.1f} MB/s" if seconds else "-",
        ])
    return table(["class", "status", "objects", "rows", "raw -> zstd -> encrypted", "copies", "duration",
                  "throughput"], body)
