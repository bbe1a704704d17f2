"""Data preprocessing: map public math/code sets onto the row schema, verify, deduplicate,
decontaminate, grade difficulty, and write the stage-1 (math) and stage-2 (code) sets.

Modules: `schemas` (reading, schema mapping, parquet writing), `verify` (math-verify and sandbox
checks of the reference data), `dedup` (normalised-text dedup, n-gram decontamination), `difficulty`
(pass rates through the rollout engine), `report` (report.json, rejects, histogram), `pipeline`
(`PreprocessConfig`, `run_preprocess`), `__main__` (the CLI). Nothing is imported here: the pipeline
pulls in torch (reward registry) and vLLM (grading), and math workers import `verify` alone.
"""
