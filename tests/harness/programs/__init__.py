"""Programs the tests run in fresh interpreters: ``python -m tests.harness.programs.NAME``."""
