"""Running trials: the per-trial pipeline, pre-training, Ray Tune scheduling, MLflow tracking."""
