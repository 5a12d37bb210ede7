"""Health checks of the services opsflow's procedures depend on, and their status document."""
