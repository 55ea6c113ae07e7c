"""wedsync-dr-dev: the checkout's development tooling, kept out of the product package `wedsync_dr`.

The embedded local stack (`local_stack`, state under the checkout's `.local/`), deterministic demo data
(`demo_data`) and the `wedsync-dev` console script (`stack`, `airflow up`, `demo-data`, `backup run`).
It imports `wedsync_dr`; `wedsync_dr` never needs it (the break-glass `wedsync-dr` runs without it).
"""
