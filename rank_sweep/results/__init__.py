"""Results of a study, read-only: records and their readers (Optuna storage, MLflow), the selection rule,
tables, and the select command. Imports neither torch, Lightning nor PEFT."""
