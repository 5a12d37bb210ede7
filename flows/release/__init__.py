"""Blue-green releases (seed 001 "advanced deployment", seed 004): a real, runnable target.

target.py    the release directory: versioned releases, `blue`/`green` links, `current` link
service.py   the small HTTP service run per color, and the router that follows `current`
instances.py starting, stopping and health-checking the two instances
flow.py      the Prefect flow: prepare, deploy, test, approve, switch, verify, roll back
cli.py       `opsflow release deploy|status|rollback|stop|history`
"""
