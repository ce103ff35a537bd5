"""Reference humanoid skill pack (loaded by skill_runtime under a private package name)."""
