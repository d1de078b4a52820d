"""The cache table (settings: CACHES without CACHE_URL): throttles and long-poll counts shared by every process."""

from django.core.management import call_command
from django.db import migrations


def create_cache_table(apps, schema_editor):
    # createcachetable does nothing for a cache that is not in the database, or a table that exists.
    call_command("createcachetable", database=schema_editor.connection.alias, verbosity=0)


class Migration(migrations.Migration):
    dependencies = [("results", "0005_attempt_rows_on_close")]

    operations = [migrations.RunPython(create_cache_table, migrations.RunPython.noop)]
