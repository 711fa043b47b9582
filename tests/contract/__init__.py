"""One suite run against every Broker implementation."""
