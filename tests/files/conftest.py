from tests.records.conftest import db_url, postgres_schema_url, postgres_url, sqlite_url  # noqa: F401
