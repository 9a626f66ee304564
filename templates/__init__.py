"""Jinja templates of the roles: one folder per component, named like its module under roles/."""
