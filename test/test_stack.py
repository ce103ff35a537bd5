"""Stack description, bring-up command lines, and the launch file's static check.

The launch file cannot run here (no `launch` / `launch_ros` wheels), so it is checked statically:
it compiles, it builds its nodes from the same stack description as `field_deploy up`, every
executable it can start is a console script of setup.py, and every file it references is
installed by setup.py's data_files.
"""

from __future__ import annotations

import ast
import configparser
import re
from pathlib import Path

import pytest
import yaml

from field_deploy.stack import StackError, launch_entries, load_stack, node_argv

ROOT = Path(__file__).resolve().parents[1]


def setup_console_scripts() -> set[str]:
    tree = ast.parse((ROOT / 'setup.py').read_text())
    scripts: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = re.fullmatch(r'\s*([\w-]+)\s*=\s*([\w.]+):(\w+)\s*', node.value)
            if match and '.' in match.group(2):
                scripts.add(match.group(1))
    return scripts


def installed_data_files() -> set[str]:
    """Files setup.py installs, as paths relative to the repository."""
    source = (ROOT / 'setup.py').read_text()
    module = ast.parse(source)
    tree_fn = next(n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == 'tree')
    folders = {a.args[0].value for a in ast.walk(module) if isinstance(a, ast.Call)
               and getattr(a.func, 'id', '') == tree_fn.name}
    files = {str(p.relative_to(ROOT)) for folder in folders for p in (ROOT / folder).rglob('*')
             if p.is_file() and '__pycache__' not in p.parts}
    return files | {'package.xml', 'resource/field_deploy'}


def test_default_stack_filters_by_flags() -> None:
    sim = load_stack(robot='humanoid_29dof', sim=True, record=True, bag_dir='/tmp/b')
    assert [n.name for n in sim.nodes] == ['sim_robot', 'data_recorder', 'skill_runtime', 'health_monitor',
                                           'bag_uploader', 'live_view']
    assert [n.name for n in sim.managed] == ['sim_robot', 'data_recorder', 'skill_runtime']
    assert sim.node('sim_robot').parameters == {'profile': 'humanoid_29dof'}
    assert sim.node('data_recorder').parameters['output'] == '/tmp/b'
    assert sim.node('data_recorder').stop_timeout == 60 and sim.node('sim_robot').stop_timeout == 15
    hardware = load_stack(sim=False, record=False)
    assert [n.name for n in hardware.nodes] == ['skill_runtime', 'health_monitor', 'live_view']


def test_node_argv_is_a_ros_run_command_line() -> None:
    stack = load_stack(robot='quadruped_12dof', namespace='go2')
    argv = node_argv(stack.node('sim_robot'), stack.namespace)
    assert argv[:2] == ['sim_robot', '--ros-args']
    assert '__ns:=/go2' in argv and not any(a.startswith('__node') for a in argv)
    assert 'profile:=quadruped_12dof' in argv and 'autostart:=false' in argv
    monitor = node_argv(stack.node('health_monitor'))
    assert not any(a.startswith('autostart') for a in monitor)


@pytest.mark.parametrize(('patch', 'key', 'words'), [
    ({'nodes': [{'name': 'a', 'executable': 'x', 'colour': 1}]}, 'nodes[0].colour', 'unknown key'),
    ({'nodes': [{'name': 'a', 'executable': 'x', 'when': 'tuesday'}]}, 'nodes[0].when', 'is not one of'),
    ({'nodes': [{'name': 'a', 'executable': 'x', 'parameters': {'p': '${nope}'}}]},
     'nodes[0].parameters.p', 'unknown variable'),
    ({'nodes': [{'name': 'a', 'executable': 'x'}, {'name': 'a', 'executable': 'y'}]},
     'nodes[1].name', 'duplicate node'),
    ({'nodes': [{'name': 'a', 'executable': 'x', 'params_files': ['/no/such.yaml']}]},
     'nodes[0].params_files[0]', 'no such file'),
    ({'nodes': []}, 'nodes', 'non-empty list'),
    ({'nodes': [{'name': 'a', 'executable': 'x', 'stop_timeout': 'soon'}]}, 'nodes[0].stop_timeout',
     'expected seconds > 0'),
])
def test_bad_stack_is_refused_naming_file_and_key(tmp_path: Path, patch: dict, key: str, words: str) -> None:
    path = tmp_path / 'stack.yaml'
    path.write_text(yaml.safe_dump({'name': 'bad', **patch}))
    with pytest.raises(StackError) as info:
        load_stack(path)
    text = str(info.value)
    assert text.startswith(f'{path}: {key}'), text
    assert words in text


def test_launch_file_compiles_and_uses_the_stack_description() -> None:
    source = (ROOT / 'launch' / 'field_stack.launch.py').read_text()
    compile(source, 'field_stack.launch.py', 'exec')
    module = ast.parse(source)
    imported = {alias.name for node in ast.walk(module) if isinstance(node, ast.ImportFrom)
                for alias in node.names if node.module == 'field_deploy.stack'}
    assert {'load_stack', 'launch_entries'} <= imported
    arguments = next(n for n in module.body if isinstance(n, ast.Assign)
                     and getattr(n.targets[0], 'id', '') == 'ARGUMENTS')
    names = {k.value for k in arguments.value.keys}
    assert {'robot', 'sim', 'record', 'namespace'} <= names


@pytest.mark.parametrize('sim', [True, False])
@pytest.mark.parametrize('robot', ['quadruped_12dof', 'humanoid_29dof'])
def test_launch_entries_name_console_scripts_and_installed_files(sim: bool, robot: str) -> None:
    scripts = setup_console_scripts()
    assert {'sim_robot', 'data_recorder', 'bag_player', 'skill_runtime', 'health_monitor',
            'field_deploy'} <= scripts
    installed = installed_data_files()
    assert 'launch/field_stack.launch.py' in installed
    assert 'config/stacks/field_stack.yaml' in installed
    for entry in launch_entries(load_stack(robot=robot, sim=sim)):
        assert entry['package'] == 'field_deploy'
        assert entry['executable'] in scripts, entry
        for item in entry['parameters']:
            if isinstance(item, str):
                rel = str(Path(item).resolve().relative_to(ROOT))
                assert rel in installed, f'{rel} is not installed by setup.py data_files'
        assert f'config/robots/{robot}.yaml' in installed


def test_setup_cfg_puts_scripts_where_ros2_run_looks() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / 'setup.cfg')
    assert cfg['install']['install_scripts'] == '$base/lib/field_deploy'
    assert (ROOT / 'resource' / 'field_deploy').is_file()
