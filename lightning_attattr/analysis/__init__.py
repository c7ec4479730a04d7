"""Pure analysis functions behind ``analyze.py`` (no Lightning): results folders, head experiments, universality."""
