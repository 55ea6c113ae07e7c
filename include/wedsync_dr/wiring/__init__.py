"""Airflow wiring of the backup pipeline: the DAG builders, their trigger forms and the reusable task chain,
one module per DAG family (common, backup_chain, restore, emergency, ops).

Imported by the DAG files, the plugin's trigger guard, the CLI's `backup run` and tests only (the rest of the
library works without Airflow). Task bodies are a few lines that call the library; everything they need from
the policy is captured when the DAG is built, so a DAG built from a modified policy (tests) runs with it.
Nothing here touches a connection, a Variable or a cloud at parse time. This package re-exports nothing:
import the family's module (e.g. `from wedsync_dr.wiring.restore import build_restore_dag`).
"""
