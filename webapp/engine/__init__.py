"""Pure workflow engine: plain values in, decisions out. No Flask, SQLAlchemy, RQ or Redis."""
