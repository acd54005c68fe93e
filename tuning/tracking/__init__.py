"""What a study records and tells: MLflow runs and models, the ledger, the recorder's
events, the progress line and the console."""
