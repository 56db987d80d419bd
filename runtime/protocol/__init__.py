"""Wire protocols: MLflow scoring and the Open Inference Protocol (v2)."""
