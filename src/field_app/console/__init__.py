"""The operator's console: ``field_deploy mission``, ``skills run|stop|estop|reset|status``,
``status`` and ``bag mark`` on a running stack, with no ROS command-line tool installed.

Everything goes through the standard interfaces ``ros2 lifecycle`` / ``ros2 service`` /
``ros2 param`` use (lifecycle_msgs, std_srvs/Trigger, rcl_interfaces, diagnostic_msgs, std_msgs),
through :class:`skill_runtime.client.SkillClient` and :class:`field_app.operator.Operator`, so
the console and the ROS tools stay interchangeable. Pure parts (parameter checks, the status
board) have no rclpy import; :mod:`.session` is the one place that connects to the stack.
Exit codes: see :mod:`field_deploy.cli`.
"""

import os

DEFAULT_TIMEOUT = float(os.environ.get('FIELD_DEPLOY_TIMEOUT', '5'))
"""Seconds to wait for the stack to be heard, and for a service to answer."""
