"""Where roles run: in-process (local.py) or as Ray actor groups (ray_roles.py, later)."""
