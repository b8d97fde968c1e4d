"""MLflow tracking (the only package that imports mlflow): the logger, its process, plots and the UI server."""
