"""Prefect flows: compose the tasks in ``tasks/``; no ML logic lives here."""
