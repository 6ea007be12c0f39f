"""What the real task-queue workers of the tests import: settings, RQ jobs, a Celery app."""
