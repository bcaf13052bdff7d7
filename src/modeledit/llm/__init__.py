"""Language models: knowledge editing (requests, methods, statistics, evaluation)."""
