"""The project's own records (jobs, results, dead letters, ...) in SQLite or PostgreSQL.

`db` finds and opens the database, `models` holds the tables, and each other module holds the
queries of one procedure (`files` for batch file processing).
"""
