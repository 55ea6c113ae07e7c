"""Benchmark: the encryption layer against named anchors, in one run, printed as ratios (not a test).

    .venv/bin/python bench/bench_crypto.py [--size-mb 1024] [--runs 3] [--dir /tmp]

Generates two files of --size-mb each into a temporary directory (CSV-like rows, and incompressible
random bytes), reads them once so the page cache is warm, and measures, each as the median of --runs
(interleaved with its anchor):

1. Tink-format encryption alone (`EncryptingWriter`: AES-256-GCM segments) vs `openssl speed -evp
   aes-256-gcm` at 16 KiB blocks: the cipher's ceiling on this CPU. Goal: >= 1 GB/s.
2. zstd -3 + encryption vs `zstd -3 -c FILE > /dev/null`. Goal: >= 0.9x of zstd alone. Two lines each:
   compress + encrypt proper (zstandard's stream writer into `EncryptingWriter`), and the full object
   pipeline as the backup runs it (`encrypt_stream`: the same plus the plaintext and ciphertext sha256 the
   manifest records; SHA-256 runs at about 1.5 GB/s per pass even with SHA-NI, so on incompressible data,
   which zstd merely stores, the two hashes cost more than zstd does). The zstd CLI compresses in one
   worker thread beside its I/O thread by default (-T1); `zstd_threads=1`, the library's default, is the
   same arrangement. Threads 0 (all in the calling thread) and 2 are shown for comparison.
3. Decryption + decompression (the restore path) vs `zstd -d` of the same compressed data.

Output goes to /dev/null for every contender. Shared cores make absolute figures swing: compare ratios.
The last recorded figures are in docs/FORMAT.md, section 8.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "include"))

import zstandard  # noqa: E402

from wedsync_dr import crypto  # noqa: E402

MB = 10**6
BLOCK_ROWS = 400_000  # about 32 MB of distinct rows, repeated: far beyond zstd-3's 2 MiB window


def generate_rows(path: Path, size: int) -> None:
    """CSV-like rows (ids, e-mails, statuses, amounts, hex tokens) as COPY would produce them."""
    rng = random.Random(2026)
    first = [b"olivia", b"liam", b"emma", b"noah", b"ava", b"oliver", b"sophia", b"elijah", b"mia", b"james"]
    last = [b"smith", b"jones", b"brown", b"taylor", b"wilson", b"davies", b"evans", b"thomas", b"walker"]
    status = [b"attending", b"declined", b"pending"]
    block = b"".join(
        b"%d\t%d\t%s.%s%d@mail.example\t%s\ttable %d\t2026-%02d-%02d\t%.2f\t%012x\n" % (
            i, rng.getrandbits(30), rng.choice(first), rng.choice(last), rng.randrange(1000),
            rng.choice(status), rng.randrange(40), rng.randrange(1, 13), rng.randrange(1, 29),
            rng.random() * 500, rng.getrandbits(48))
        for i in range(BLOCK_ROWS))
    with open(path, "wb") as out:
        written = 0
        while written < size:
            written += out.write(block[:size - written])


def generate_random(path: Path, size: int) -> None:
    with open(path, "wb") as out:
        for _ in range(0, size, 16 * MB):
            out.write(os.urandom(min(16 * MB, size - out.tell())))


def warm(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(16 * MB):
            pass


def interleaved_medians(contenders: dict[str, Callable[[], object]], runs: int) -> dict[str, float]:
    """Median seconds of each contender, run in turn within every round, so that an anchor and what is
    compared with it meet the same noise from neighbours on a shared machine."""
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(runs):
        for name, run in contenders.items():
            started = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in times.items()}


def shell(command: str) -> Callable[[], None]:
    return lambda: subprocess.run(["bash", "-o", "pipefail", "-c", command], check=True)


def openssl_gcm_bytes_per_second() -> float:
    """openssl speed's AES-256-GCM figure at 16,384-byte blocks (it reports 1000s of bytes per second)."""
    output = subprocess.run(["openssl", "speed", "-evp", "aes-256-gcm", "-seconds", "3", "-bytes", "16384"],
                            capture_output=True, text=True, check=True).stdout
    header = next(line for line in output.splitlines() if line.startswith("type"))
    row = next(line for line in output.splitlines() if line.lower().startswith("aes-256-gcm"))
    column = re.findall(r"\d+ bytes", header).index("16384 bytes")
    return float(re.findall(r"([\d.]+)k", row)[column]) * 1000


def cipher_only(path: Path, key: crypto.DataKey) -> None:
    with open(path, "rb") as source, open(os.devnull, "wb") as sink:
        writer = crypto.EncryptingWriter(sink, key, b"bench")
        buffer = memoryview(bytearray(4 << 20))
        while count := source.readinto(buffer):
            writer.write(buffer[:count])
        writer.close()


def compress_and_encrypt(path: Path, key: crypto.DataKey, zstd_threads: int) -> None:
    """zstd into the Tink writer, without the manifest's checksums: the part the goal is about."""
    with open(path, "rb") as source, open(os.devnull, "wb") as sink:
        writer = crypto.EncryptingWriter(sink, key, b"bench")
        compressor = zstandard.ZstdCompressor(level=3, threads=zstd_threads)
        with compressor.stream_writer(writer, write_size=1 << 20, closefd=False) as compressing:
            buffer = memoryview(bytearray(4 << 20))
            while count := source.readinto(buffer):
                compressing.write(buffer[:count])
        writer.close()


def pipeline(path: Path, key: crypto.DataKey, zstd_level: int | None, zstd_threads: int,
             ciphertext: Path | None = None) -> crypto.EncryptStats:
    with open(path, "rb") as source, open(ciphertext or os.devnull, "wb") as sink:
        return crypto.encrypt_stream(source, sink, key, b"bench", zstd_level=zstd_level,
                                     zstd_threads=zstd_threads)


def restore(ciphertext: Path, key: crypto.DataKey) -> None:
    with open(ciphertext, "rb") as source, open(os.devnull, "wb") as sink:
        crypto.decrypt_stream(source, sink, key, b"bench", object_name="bench")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="size of each generated file (MB)")
    parser.add_argument("--runs", type=int, default=3, help="measurements per figure (the median is shown)")
    parser.add_argument("--dir", default=None, help="where to put the generated files (default: $TMPDIR)")
    args = parser.parse_args()
    size = args.size_mb * MB
    key = crypto.KeyRing.new_data_key()

    def report(group: dict[str, Callable[[], object]], anchor: str | None = None,
               anchor_rate: float | None = None) -> dict[str, float]:
        """Measures a group (interleaved) and prints MB/s, with ratios to the anchor (the group's first)."""
        rates = {name: size / seconds / MB for name, seconds in interleaved_medians(group, args.runs).items()}
        anchor_rate = anchor_rate or (rates[anchor] if anchor else None)
        for name, rate in rates.items():
            ratio = f"  {rate / anchor_rate:5.2f}x" if anchor_rate and name != anchor else ""
            print(f"  {name:<62} {rate:8.0f} MB/s{ratio}", flush=True)
        return rates

    with tempfile.TemporaryDirectory(dir=args.dir, prefix="bench_crypto-") as tmp:
        files = {"csv": Path(tmp) / "rows.csv", "random": Path(tmp) / "random.bin"}
        print(f"generating {args.size_mb} MB of CSV-like rows and {args.size_mb} MB of random bytes in {tmp}")
        generate_rows(files["csv"], size)
        generate_random(files["random"], size)
        for path in files.values():
            warm(path)

        print("\n1. encryption (Tink AES256_GCM_HKDF_1MB segments), ratios to openssl")
        openssl_rate = openssl_gcm_bytes_per_second() / MB
        print(f"  {'openssl speed -evp aes-256-gcm, 16384-byte blocks':<62} {openssl_rate:8.0f} MB/s")
        encryption = report({
            "EncryptingWriter, random file -> /dev/null": lambda: cipher_only(files["random"], key),
            "encrypt_stream, no zstd (+ plaintext and ciphertext sha256)":
                lambda: pipeline(files["random"], key, None, 0),
        }, anchor_rate=openssl_rate)
        cipher_rate = encryption["EncryptingWriter, random file -> /dev/null"]

        print("\n2. zstd -3 + encrypt, ratios to zstd -3 alone")
        goal_ratios = {}
        for kind, path in files.items():
            anchor, ours = f"zstd -3 CLI, {kind}", f"zstd-3 + EncryptingWriter, zstd_threads=1, {kind}"
            rates = report({
                anchor: shell(f"zstd -3 -q -c {path} > /dev/null"),
                ours: lambda p=path: compress_and_encrypt(p, key, 1),
                **{f"encrypt_stream (+ both sha256), zstd_threads={threads}, {kind}":
                   (lambda p=path, t=threads: pipeline(p, key, 3, t)) for threads in (1, 0, 2)},
            }, anchor=anchor)
            goal_ratios[kind] = rates[ours] / rates[anchor]

        print("\n3. restore: decrypt + zstd -d (+ plaintext sha256), ratios to zstd -d alone")
        for kind, path in files.items():
            ciphertext, compressed = Path(tmp) / f"{kind}.tink", Path(tmp) / f"{kind}.zst"
            pipeline(path, key, 3, 1, ciphertext)
            subprocess.run(["zstd", "-3", "-q", "-f", str(path), "-o", str(compressed)], check=True)
            anchor = f"zstd -d CLI, {kind}"
            report({anchor: shell(f"zstd -d -q -c {compressed} > /dev/null"),
                    f"decrypt_stream, {kind}": lambda c=ciphertext: restore(c, key)}, anchor=anchor)

    print("\ngoals")
    print(f"  encryption >= 1 GB/s: {cipher_rate / 1000:.2f} GB/s "
          f"({'met' if cipher_rate >= 1000 else 'MISSED'})")
    for kind, ratio in goal_ratios.items():
        print(f"  zstd-3 + encryption >= 0.9x zstd -3, {kind}: {ratio:.2f}x "
              f"({'met' if ratio >= 0.9 else 'MISSED'})")


if __name__ == "__main__":
    main()
