"""The operator admin: one module per area, all on one read-only base (results.admin.base).

Django's admin autodiscovery imports this package; importing each area registers its ModelAdmins.
Nothing else imports the admin: it is a face, on the top floor.
"""

from results.admin import crons, dead_letters, jobs, tenants, workers  # noqa: F401  (registers each area's ModelAdmins)
