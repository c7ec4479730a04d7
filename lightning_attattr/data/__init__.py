"""Data: GLUE task definitions and readers, and the synthetic planted-interaction task."""
