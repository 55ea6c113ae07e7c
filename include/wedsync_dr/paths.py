"""Where the project's non-Python files live (SQL, policy); the library is installed editable from include/."""

from pathlib import Path

INCLUDE_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = INCLUDE_DIR.parent
SQL_DIR = INCLUDE_DIR / "sql"
CONFIG_DIR = INCLUDE_DIR / "config"
