from wedsync_dr.report import backup_summary, human_bytes


def test_human_bytes():
    assert human_bytes(999) == "999 B"
    assert human_bytes(1_500_000) == "1.5 MB"
    assert human_bytes(None) == "-"


def test_backup_summary_lists_sizes_copies_and_throughput():
    text = backup_summary([{"data_class": "client_data", "status": "degraded", "objects": 12, "rows": 1234567,
                            "plaintext_bytes": 30_000_000, "compressed_bytes": 9_000_000,
                            "ciphertext_bytes": 9_100_000, "copies": {"aws": "validated", "gcp": "failed"},
                            "seconds": 2.0}])
    header, rule, row = text.splitlines()
    assert header.split()[:3] == ["class", "status", "objects"]
    assert set(rule) <= {"-", " "}
    assert "client_data" in row and "1,234,567" in row and "30.0 MB -> 9.0 MB -> 9.1 MB" in row
    assert "aws:validated gcp:failed" in row and "15.0 MB/s" in row
