"""Find skill packs, decide which are accepted on this robot, import the accepted ones. Pure.

Order of checks, cheapest and safest first, and never importing pack code before the last:
manifest schema → allow-list (vendor / pack) → skill API version → robot kind → joint groups
exist on the profile → sha256 of every file → import of each skill's ``module:Class``. Any
failure refuses that pack only, with a :class:`~skill_runtime.manifest.PackError` naming pack,
file and field; discovery of the others goes on.

Where packs come from:

* entry points in the group :data:`ENTRY_POINT_GROUP` (installed distributions); the entry point
  resolves to a path, or a callable returning the path, of the pack folder. Keep that target a
  tiny locator: it is imported to find the folder, before the digests are checked.
* every sub-folder with a ``skillpack.yaml`` of each folder on the pack path (or the folder itself).
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.metadata
import sys
import types
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from field_deploy.profile import RobotProfile
from skill_runtime.api import API_VERSION, Skill
from skill_runtime.manifest import MANIFEST, Manifest, PackError, read_manifest, verify_digests

ENTRY_POINT_GROUP = 'field_deploy.skill_packs'
DEFAULT_ALLOW = ('field_deploy/*',)


@dataclass
class PackCandidate:
    """A pack folder and where it was found (``entry_point:<name>`` or ``path:<folder>``)."""

    path: Path
    source: str


@dataclass
class PackRecord:
    """The verdict on one candidate; ``classes`` is filled only for accepted, imported packs."""

    candidate: PackCandidate
    manifest: Manifest | None = None
    error: PackError | None = None
    classes: dict[str, type[Skill]] = field(default_factory=dict)

    @property
    def accepted(self) -> bool:
        return self.error is None and self.manifest is not None

    @property
    def name(self) -> str:
        if self.manifest is not None:
            return self.manifest.name
        return self.error.pack if self.error is not None else self.candidate.path.name

    @property
    def reason(self) -> str:
        return 'accepted' if self.error is None else str(self.error)


def entry_point_candidates(group: str = ENTRY_POINT_GROUP) -> list[PackCandidate]:
    """Pack folders declared by installed distributions; a broken entry point becomes a
    candidate that will be refused (its path does not exist), not an exception."""
    out = []
    for ep in sorted(importlib.metadata.entry_points(group=group), key=lambda e: e.name):
        try:
            target = ep.load()
            path = Path(target() if callable(target) else target)
        except Exception as exc:  # a vendor's locator must not take discovery down
            path = Path(f'<entry point {ep.name} failed: {type(exc).__name__}: {exc}>')
        out.append(PackCandidate(path=path, source=f'entry_point:{ep.name}'))
    return out


def folder_candidates(pack_path: Iterable[str | Path]) -> list[PackCandidate]:
    out = []
    for folder in pack_path:
        folder = Path(folder).expanduser()
        if (folder / MANIFEST).is_file():
            out.append(PackCandidate(path=folder, source=f'path:{folder}'))
        elif folder.is_dir():
            out.extend(PackCandidate(path=sub, source=f'path:{folder}')
                       for sub in sorted(folder.iterdir()) if (sub / MANIFEST).is_file())
    return out


def allowed(manifest: Manifest, allow: Sequence[str]) -> bool:
    """``allow`` entries are ``vendor/pack`` glob patterns: ``acme/*``, ``*/inspection``, ``*``."""
    key = f'{manifest.vendor}/{manifest.name}'
    return any(fnmatch.fnmatchcase(key, pattern) or pattern == '*' for pattern in allow)


def api_compatible(required: str, provided: str = API_VERSION) -> bool:
    r_major, r_minor = (int(x) for x in required.split('.'))
    p_major, p_minor = (int(x) for x in provided.split('.'))
    return r_major == p_major and r_minor <= p_minor


def check_pack(path: Path, profile: RobotProfile | None, allow: Sequence[str]) -> Manifest:
    """Every check but the import; raises :class:`PackError`. ``profile`` None skips robot checks."""
    manifest = read_manifest(path)
    mfile = str(manifest.path)
    if not allowed(manifest, allow):
        raise PackError(manifest.name, mfile, 'vendor',
                        f'{manifest.vendor}/{manifest.name} is not in the runtime allow-list '
                        f'({", ".join(allow) or "empty"})')
    if not api_compatible(manifest.api_version):
        raise PackError(manifest.name, mfile, 'api_version',
                        f'pack needs skill API {manifest.api_version}, this runtime provides '
                        f'{API_VERSION}')
    if profile is not None:
        if profile.kind not in manifest.robot_kinds:
            raise PackError(manifest.name, mfile, 'robot_kinds',
                            f'robot {profile.name!r} is a {profile.kind}, pack supports '
                            f'{", ".join(manifest.robot_kinds)}')
        for i, group in enumerate(manifest.joint_groups):
            if group not in profile.groups:
                raise PackError(manifest.name, mfile, f'joint_groups[{i}]',
                                f'robot {profile.name!r} has no joint group {group!r} '
                                f'(it has {", ".join(sorted(profile.groups))})')
    verify_digests(manifest)
    return manifest


def _pack_package(name: str, pack_dir: Path, fresh: bool) -> str:
    """Register the pack folder as package ``_skillpack_<name>`` (``fresh``: drop an earlier import)."""
    prefix = f'_skillpack_{name}'
    if fresh:
        for mod in [m for m in sys.modules if m == prefix or m.startswith(prefix + '.')]:
            del sys.modules[mod]
    if prefix not in sys.modules:
        package = types.ModuleType(prefix)
        package.__path__ = [str(pack_dir)]
        package.__package__ = prefix
        sys.modules[prefix] = package
    return prefix


def import_skill(pack_dir: Path, pack: str, skill: str, entry: str) -> type[Skill]:
    """Import one skill class ``module:Class`` of a checked pack; a :class:`PackError` names the file.

    Only ever called where vendor code may run: a skill worker, the discovery child, the
    ``field_deploy skills`` command — never the runtime process.
    """
    prefix = _pack_package(pack, pack_dir, fresh=False)
    module_name, class_name = entry.split(':')
    file = str(pack_dir / (module_name.replace('.', '/') + '.py'))
    try:
        module = importlib.import_module(f'{prefix}.{module_name}')
    except Exception as exc:
        raise PackError(pack, file, f'skills.{skill}.entry',
                        f'importing {module_name} raised {type(exc).__name__}: {exc}') from None
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Skill)):
        raise PackError(pack, file, f'skills.{skill}.entry',
                        f'{class_name!r} is not a subclass of skill_runtime.api.Skill')
    return cls


def import_skills(manifest: Manifest) -> dict[str, type[Skill]]:
    """Import every skill class of a checked pack under a private package name.

    The pack folder becomes package ``_skillpack_<name>`` (so its modules can import each other
    relatively) and never shadows an installed module. Any exception is a refusal naming the file.
    """
    _pack_package(manifest.name, manifest.path.parent, fresh=True)
    return {spec.name: import_skill(manifest.path.parent, manifest.name, spec.name, spec.entry)
            for spec in manifest.skills}


Locator = Callable[[], list[PackCandidate]]
ImportProbe = Callable[[list[Manifest]], dict[str, PackError]]


def discover(profile: RobotProfile | None, *, pack_path: Iterable[str | Path] = (),
             allow: Sequence[str] = DEFAULT_ALLOW, entry_points: bool = True,
             do_import: bool = True, locate: Locator = entry_point_candidates,
             probe: ImportProbe | None = None) -> list[PackRecord]:
    """Every candidate pack with its verdict. Two packs with the same name: the first wins.

    ``locate`` resolves the entry points and ``probe`` test-imports the checked packs (it returns
    the refusals by pack name): the runtime passes functions that do both in a short-lived child
    process (:mod:`skill_runtime.discovery`), so it never imports vendor code itself. Without a
    probe, ``do_import`` imports the skill classes here (the ``field_deploy skills`` command).
    """
    candidates = (locate() if entry_points else []) + folder_candidates(pack_path)
    records: list[PackRecord] = []
    seen: dict[str, PackRecord] = {}
    for cand in candidates:
        rec = PackRecord(candidate=cand)
        records.append(rec)
        try:
            rec.manifest = check_pack(cand.path, profile, allow)
            if rec.manifest.name in seen:
                first = seen[rec.manifest.name].candidate
                raise PackError(rec.manifest.name, str(rec.manifest.path), 'name',
                                f'a pack of this name was already found at {first.path} '
                                f'({first.source})')
            if do_import and probe is None:
                rec.classes = import_skills(rec.manifest)
            seen[rec.manifest.name] = rec
        except PackError as exc:
            rec.error = exc
        except Exception as exc:  # anything unexpected still refuses only this pack
            rec.error = PackError(rec.name, str(cand.path), '<pack>',
                                  f'{type(exc).__name__}: {exc}')
    if do_import and probe is not None:
        refused = probe([rec.manifest for rec in seen.values() if rec.manifest is not None])
        for name, error in refused.items():
            if name in seen:
                seen[name].error = error
    return records
