"""field_deploy: shared pieces of the stack (robot profiles, QoS contract, environment, CLI).

Importing this package makes sure ``AMENT_PREFIX_PATH`` names an install prefix: the PyPI
``ros-jazzy-*`` wheels live in a virtual environment that ament_index (and through it
rmw_implementation) only finds when that variable points at it. Every top-level package of
the project imports ``field_deploy`` first, before anything imports rclpy.
"""

from field_deploy.rosenv import ensure_ament_prefix

ensure_ament_prefix()

__version__ = '0.1.0'
