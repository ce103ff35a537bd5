"""The reference skill packs shipped with field_deploy, found through entry points like any vendor's.

These two functions are the entry-point targets (group ``field_deploy.skill_packs``): they only
locate the pack folders; the pack code is imported by the runtime after the digests match.
"""

from pathlib import Path

HERE = Path(__file__).resolve().parent


def quadruped_pack_dir() -> Path:
    return HERE / 'quadruped'


def humanoid_pack_dir() -> Path:
    return HERE / 'humanoid'
