"""The pool ledger: SQLAlchemy models and repository functions, migrated by Alembic.

Rules: the only code that talks to the database; ORM objects never leave this package (the
functions return the plain records of ``records``); never imports torch or anything above it.
"""
