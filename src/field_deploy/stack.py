"""Stack descriptions: which nodes make up the robot stack, with their parameters — one file.

``config/stacks/<name>.yaml`` is read by the bring-up (``field_deploy up``), by the ROS launch
file (``launch/field_stack.launch.py``) and by the health monitor's lifecycle manager (which
node to configure and activate, in which order, and how to start it again). One description,
three readers, so the ways of starting the stack cannot drift apart. No rclpy import here.

Values may use ``${robot}``, ``${namespace}``, ``${bag_dir}``, ``${sim}``, ``${record}``,
``${config}`` (the config folder) and ``${stack}`` (this file, resolved); a node with
``when: sim`` / ``when: record`` / ``when: hardware`` only runs when the
bring-up's flags say so.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from field_deploy.profile import ConfigError, read_yaml
from field_deploy.rosenv import config_dir

CONDITIONS = ('always', 'sim', 'hardware', 'record')
_VAR = re.compile(r'\$\{(\w+)\}')


class StackError(ConfigError):
    """A stack description that does not validate; names the file and the key."""


@dataclass(frozen=True)
class StackNode:
    name: str
    """The node's own name (fixed by its executable: ``sim_robot``, ``data_recorder`` …)."""
    executable: str
    when: str = 'always'
    managed: bool = True
    """Driven through configure / activate by the lifecycle manager (it starts with autostart off)."""
    params_files: tuple[str, ...] = ()
    parameters: dict[str, Any] = field(default_factory=dict)
    remappings: dict[str, str] = field(default_factory=dict)
    args: tuple[str, ...] = ()
    restart_parameters: dict[str, Any] = field(default_factory=dict)
    """Added when the bring-up restarts this (unmanaged) node after it died: the health
    monitor gets ``adopt: true`` so it takes over the running nodes instead of starting them."""
    stop_timeout: float = 15.0
    """Seconds the bring-up waits after SIGINT before it kills the node: the recorder needs its
    drain and the close of its bag (killed, the bag has no metadata and no loss accounting)."""


@dataclass(frozen=True)
class Stack:
    name: str
    path: Path
    namespace: str
    nodes: tuple[StackNode, ...]

    def node(self, name: str) -> StackNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f'stack {self.name!r} has no node {name!r}')

    @property
    def managed(self) -> list[StackNode]:
        """The lifecycle-managed nodes, in bring-up order."""
        return [n for n in self.nodes if n.managed]


def stack_path(name_or_path: str | Path) -> Path:
    candidate = Path(name_or_path)
    if candidate.suffix in ('.yaml', '.yml') or candidate.exists():
        return candidate
    return config_dir() / 'stacks' / f'{name_or_path}.yaml'


def _substitute(value: Any, variables: dict[str, str], path: Path, key: str) -> Any:
    if isinstance(value, str):
        def repl(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in variables:
                raise StackError(path, key, f'unknown variable ${{{name}}} '
                                            f'(known: {", ".join(sorted(variables))})')
            return variables[name]
        return _VAR.sub(repl, value)
    if isinstance(value, list):
        return [_substitute(v, variables, path, f'{key}[{i}]') for i, v in enumerate(value)]
    if isinstance(value, dict):
        return {k: _substitute(v, variables, path, f'{key}.{k}') for k, v in value.items()}
    return value


def _node(raw: Any, path: Path, key: str) -> StackNode:
    allowed = {'name', 'executable', 'when', 'managed', 'params_files', 'parameters', 'remappings',
               'args', 'restart_parameters', 'stop_timeout'}
    if not isinstance(raw, dict):
        raise StackError(path, key, 'expected a mapping')
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise StackError(path, f'{key}.{unknown[0]}', f'unknown key (allowed: {", ".join(sorted(allowed))})')
    for required in ('name', 'executable'):
        if not isinstance(raw.get(required), str) or not raw[required]:
            raise StackError(path, f'{key}.{required}', 'missing or not a string')
    when = raw.get('when', 'always')
    if when not in CONDITIONS:
        raise StackError(path, f'{key}.when', f'{when!r} is not one of {", ".join(CONDITIONS)}')
    managed = raw.get('managed', True)
    if not isinstance(managed, bool):
        raise StackError(path, f'{key}.managed', f'expected true or false, got {managed!r}')
    for mapping in ('parameters', 'remappings', 'restart_parameters'):
        if not isinstance(raw.get(mapping, {}), dict):
            raise StackError(path, f'{key}.{mapping}', 'expected a mapping')
    for listing in ('params_files', 'args'):
        value = raw.get(listing, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise StackError(path, f'{key}.{listing}', 'expected a list of strings')
    stop_timeout = raw.get('stop_timeout', 15.0)
    if isinstance(stop_timeout, bool) or not isinstance(stop_timeout, (int, float)) or stop_timeout <= 0:
        raise StackError(path, f'{key}.stop_timeout', f'expected seconds > 0, got {stop_timeout!r}')
    params_files = tuple(raw.get('params_files', []))
    for i, file in enumerate(params_files):
        if not Path(file).is_file():
            raise StackError(path, f'{key}.params_files[{i}]', f'no such file {file}')
    return StackNode(name=raw['name'], executable=raw['executable'], when=when, managed=managed,
                     params_files=params_files, parameters=dict(raw.get('parameters', {})),
                     remappings={str(k): str(v) for k, v in raw.get('remappings', {}).items()},
                     args=tuple(raw.get('args', [])),
                     restart_parameters=dict(raw.get('restart_parameters', {})),
                     stop_timeout=float(stop_timeout))


def load_stack(name_or_path: str | Path = 'field_stack', *, robot: str = 'quadruped_12dof',
               sim: bool = True, record: bool = True, namespace: str = '',
               bag_dir: str = 'bags/field_stack') -> Stack:
    """Parse, substitute and filter a stack description for the given bring-up flags."""
    path = stack_path(name_or_path)
    doc = read_yaml(path, StackError, 'name', 'no such stack description')
    if not isinstance(doc, dict) or not isinstance(doc.get('nodes'), list) or not doc['nodes']:
        raise StackError(path, 'nodes', 'expected a non-empty list of nodes')
    unknown = sorted(set(doc) - {'name', 'description', 'nodes'})
    if unknown:
        raise StackError(path, unknown[0], 'unknown key (allowed: name, description, nodes)')
    variables = {'robot': robot, 'namespace': namespace, 'bag_dir': bag_dir,
                 'config': str(config_dir()), 'stack': str(path.resolve()),
                 'sim': str(sim).lower(), 'record': str(record).lower()}
    raw_nodes = _substitute(doc['nodes'], variables, path, 'nodes')
    nodes = [_node(raw, path, f'nodes[{i}]') for i, raw in enumerate(raw_nodes)]
    names = [n.name for n in nodes]
    for i, name in enumerate(names):
        if names.index(name) != i:
            raise StackError(path, f'nodes[{i}].name', f'duplicate node {name!r}')
    active = {'always', 'record' if record else 'always', 'sim' if sim else 'hardware'}
    return Stack(name=str(doc.get('name', path.stem)), path=path, namespace=namespace,
                 nodes=tuple(n for n in nodes if n.when in active))


def ros_value(value: Any) -> str:
    """A parameter value as ``-p name:=value`` expects it (YAML syntax)."""
    if isinstance(value, str):
        return value if value and yaml.safe_load(value) == value else yaml.safe_dump(value).strip()
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()


def node_argv(node: StackNode, namespace: str = '', *, autostart: bool | None = None,
              restart: bool = False) -> list[str]:
    """The command line that starts ``node`` (executable first), as ``ros2 run`` would
    (``restart``: the command line of its restart, with ``restart_parameters``)."""
    # No ``__node:=`` remap: it renames every node of the process (the runtime's skill nodes,
    # the monitor's helper nodes), so a stack node's ``name`` is the node's own fixed name.
    argv = [node.executable, *node.args, '--ros-args']
    if namespace:
        argv += ['-r', f'__ns:=/{namespace.strip("/")}']
    for file in node.params_files:
        argv += ['--params-file', file]
    params = dict(node.parameters)
    if autostart is None:
        autostart = not node.managed
    if node.managed:
        params['autostart'] = autostart
    if restart:
        params.update(node.restart_parameters)
    for key, value in params.items():
        argv += ['-p', f'{key}:={ros_value(value)}']
    for source, target in node.remappings.items():
        argv += ['-r', f'{source}:={target}']
    return argv


def launch_entries(stack: Stack) -> list[dict[str, Any]]:
    """Keyword arguments of one ``launch_ros.actions.Node`` per stack node.

    The launch file is a thin loop over this, so a robot with ROS installed starts exactly what
    ``field_deploy up`` starts (same executables, parameter files, parameters, remappings).
    """
    entries = []
    for node in stack.nodes:
        params: dict[str, Any] = dict(node.parameters)
        if node.managed:
            params['autostart'] = False
        entries.append({
            'package': 'field_deploy',
            'executable': node.executable,
            'namespace': stack.namespace,
            'parameters': [*node.params_files, params],
            'remappings': list(node.remappings.items()),
            'arguments': list(node.args),
            'output': 'screen',
        })
    return entries


def stack_arguments(stack_args: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``['robot=quadruped_12dof', 'sim=true', …]`` (a node parameter) → :func:`load_stack` kwargs.

    The health monitor gets the stack it manages this way: the same file and flags as the
    bring-up that started it, so it restarts a dead node with the very same command line.
    """
    kwargs: dict[str, Any] = {}
    for item in stack_args:
        key, sep, value = item.partition('=')
        if not sep or key not in ('robot', 'sim', 'record', 'namespace', 'bag_dir'):
            raise ValueError(f'stack_args: {item!r} is not robot=, sim=, record=, namespace= or bag_dir=')
        kwargs[key] = value.lower() in ('1', 'true', 'yes') if key in ('sim', 'record') else value
    return kwargs
