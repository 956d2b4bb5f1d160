"""In-memory search: HNSW graphs, exact scoring, attribute columns and the planner. Knows nothing of SQL."""
