"""The web page at / (ui/static/)."""
