"""Fast DDS configuration shipped with the project (``config/fastdds.xml``); no rclpy import.

:func:`use_project_fastdds_profile` must run before the process creates its first ROS node
(rmw_fastrtps reads the XML when it creates the DDS participant). It only sets
``FASTRTPS_DEFAULT_PROFILES_FILE`` when the variable is unset, so a robot integrator's own
profile always wins; set it to an empty string to run with Fast DDS defaults.
Why the profile exists (large images and shared memory): see ``docs/sim_robot.md``.
"""

from __future__ import annotations

import os
from pathlib import Path

from field_deploy.rosenv import config_dir

ENV = 'FASTRTPS_DEFAULT_PROFILES_FILE'


def default_xml() -> str:
    return str(config_dir() / 'fastdds.xml')


def use_project_fastdds_profile() -> str | None:
    """Point Fast DDS at ``config/fastdds.xml`` unless the user chose a file; returns the file used."""
    if ENV in os.environ:
        return os.environ[ENV] or None
    path = Path(default_xml())
    if not path.is_file():
        return None
    os.environ[ENV] = str(path)
    return str(path)
