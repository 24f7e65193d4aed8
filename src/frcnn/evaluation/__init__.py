"""Evaluation: one evaluation's per-class results and PR curves (`results`), the confusion
matrix, TIDE's error breakdown, data and anchor statistics, markdown tables, and the report that
shows them all (`report`)."""
