"""A connector to copy: `cp -r connectors/_template connectors/<protocol>` (or into your own
distribution), rename, and fill in each TODO. See docs/connectors.md."""
