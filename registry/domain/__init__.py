"""Domain types and rules, free of transport and storage concerns."""
