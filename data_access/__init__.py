"""The Django app: the only way into the ORM.

selectors.py reads, services/ writes (themes, studies, launches); both take keyword-only
arguments and hand out plain data (tuning.data.theme.ThemeSpec, dataclasses), never models or
QuerySets.
"""
