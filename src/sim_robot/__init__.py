"""sim_robot."""

import field_deploy  # noqa: F401  (sets AMENT_PREFIX_PATH before rclpy is imported)
