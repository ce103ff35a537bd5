"""The application layer: what operators run on top of the modules.

``field_deploy up`` (:mod:`field_app.bringup`), ``demo`` (:mod:`field_app.demo`, with
:mod:`field_app.fleet_demo`), the operator's missions and console (:mod:`field_app.operator`,
:mod:`field_app.console`), the systemd unit (:mod:`field_app.systemd`) and the command line that
gathers every module's sub-commands (:mod:`field_app.cli`). It imports the modules
(skill_runtime, data_recorder, health_monitor, fleet) and the shared ground (``field_deploy``:
profiles, QoS, ROS helpers, stack descriptions); nothing below imports it.
"""
import field_deploy  # noqa: F401  (AMENT_PREFIX_PATH before rclpy: see field_deploy)
