"""Node-agent tutorial: one agent serving every app on a host, in five steps."""
