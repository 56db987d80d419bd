"""The line a replica prints once its model is loaded, warm and served (``ZEROSERVE_REPLICA_READY
{"port": ..., "pid": ..., ...}``): what the local backend waits for and what the logs API cuts at. One
definition; this module imports nothing, so whoever reads the line pays nothing for it."""

READY_PREFIX = "ZEROSERVE_REPLICA_READY"
