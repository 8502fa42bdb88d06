"""A cohort file in and out: read, parse, table, the problems found, the schema, the synthetic
cohort, write."""
