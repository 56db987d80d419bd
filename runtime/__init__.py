"""zeroserve runtime: one model replica (fetch through the warm cache, load, serve).

This package must stay cheap to import: a replica starts on the hot path of every cold start, so
heavy libraries (onnxruntime, mlflow, torch, aiobotocore) are imported lazily by the code that needs them.
"""

__version__ = "0.1.0"
