"""A loss x beta sweep: the job spec, its pipeline stages, the embedded runner and the report."""
