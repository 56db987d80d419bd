"""The control plane's durable state: the database (SQLite embedded, PostgreSQL shared by several
gateways) and the stores that keep their tables in it (endpoints here; tokens, permissions and the
audit log beside the front door that enforces them)."""
