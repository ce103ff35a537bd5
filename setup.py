"""ament_python package ``field_deploy``: one ROS package, several Python packages under ``src/``.

``colcon build`` on a robot installs the console scripts into ``lib/field_deploy`` (see setup.cfg)
so that ``ros2 run field_deploy <exe>`` finds them; ``pip install -e .`` into a plain virtual
environment puts the same scripts on its ``bin/``.
"""

from pathlib import Path

from setuptools import find_packages, setup

PACKAGE = 'field_deploy'
HERE = Path(__file__).parent


def tree(folder: str) -> list[tuple[str, list[str]]]:
    """Install every file below ``folder`` into ``share/field_deploy/<folder>``, keeping sub-folders."""
    entries: dict[str, list[str]] = {}
    for path in sorted((HERE / folder).rglob('*')):
        if path.is_file() and '__pycache__' not in path.parts:
            rel = path.relative_to(HERE)
            entries.setdefault(f'share/{PACKAGE}/{rel.parent}', []).append(str(rel))
    return sorted(entries.items())


setup(
    name=PACKAGE,
    version='0.1.0',
    package_dir={'': 'src'},
    packages=find_packages('src'),
    include_package_data=True,
    package_data={'': ['*.yaml', 'py.typed']},
    data_files=[
        ('share/ament_index/resource_index/packages', [f'resource/{PACKAGE}']),
        (f'share/{PACKAGE}', ['package.xml']),
        *tree('launch'),
        *tree('config'),
    ],
    install_requires=['setuptools'],
    zip_safe=False,
    maintainer='field_deploy maintainers',
    maintainer_email='maintainers@field-deploy.invalid',
    description='Skill runtime, data recorder and health monitor for field-deployed legged robots.',
    license='Apache-2.0',
    python_requires='>=3.10',
    entry_points={
        'console_scripts': [
            'field_deploy = field_app.cli:main',
            'sim_robot = sim_robot.node:main',
            'data_recorder = data_recorder.node:main',
            'bag_player = data_recorder.replay.node:main',
            'skill_runtime = skill_runtime.node:main',
            'health_monitor = health_monitor.node:main',
            'live_view = fleet.liveview_node:main',
            'bag_uploader = fleet.uploader_node:main',
        ],
        'field_deploy.skill_packs': [
            'reference_quadruped = skill_runtime.packs:quadruped_pack_dir',
            'reference_humanoid = skill_runtime.packs:humanoid_pack_dir',
        ],
    },
)
