"""Alembic environment: one store's migrations, run on the connection the repository hands over
and recorded in the store's own version table."""

from alembic import context

attributes = context.config.attributes
context.configure(connection=attributes["connection"], target_metadata=None, render_as_batch=True,
                  version_table=attributes["version_table"])
with context.begin_transaction():
    context.run_migrations()
