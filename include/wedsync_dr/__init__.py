"""wedsync-dr: encrypted, validated backups of WedSync to S3, Azure Blob and GCS, and their restore.

The library holds all logic; the Airflow DAGs in `dags/` are thin wrappers around it, and the
`wedsync-dr` console script reaches the same code without Airflow (break-glass restores).
"""
