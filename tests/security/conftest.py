"""Fixtures the security tests share with the domains' own tests (real services, throwaway data)."""

from tests.maintenance.conftest import pg_admin_url, scratch_db_name  # noqa: F401
from tests.release.conftest import app, ports, target_root  # noqa: F401
