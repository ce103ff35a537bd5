"""Launch the field_deploy stack on a robot with ROS 2 installed.

    ros2 launch field_deploy field_stack.launch.py robot:=humanoid_29dof sim:=false record:=true

Starts the same nodes, with the same parameter files, as ``field_deploy up``: both read
``config/stacks/field_stack.yaml`` through ``field_deploy.stack``.
"""

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from field_deploy.stack import launch_entries, load_stack

ARGUMENTS = {
    'robot': ('quadruped_12dof', 'robot profile: config/robots/<robot>.yaml'),
    'sim': ('true', 'start sim_robot instead of expecting the hardware driver'),
    'record': ('true', 'start the data recorder'),
    'namespace': ('', 'robot namespace'),
    'bag_dir': ('bags/field_stack', 'recorder output directory (must not exist yet)'),
    'stack': ('field_stack', 'stack description: config/stacks/<stack>.yaml'),
}


def _truthy(text: str) -> bool:
    return text.strip().lower() in ('1', 'true', 'yes', 'on')


def _nodes(context, *_args, **_kwargs):
    value = {name: LaunchConfiguration(name).perform(context) for name in ARGUMENTS}
    stack = load_stack(value['stack'], robot=value['robot'], sim=_truthy(value['sim']),
                       record=_truthy(value['record']), namespace=value['namespace'],
                       bag_dir=value['bag_dir'])
    return [Node(**entry) for entry in launch_entries(stack)]


def generate_launch_description() -> LaunchDescription:
    return LaunchDescription([
        *(DeclareLaunchArgument(name, default_value=default, description=text)
          for name, (default, text) in ARGUMENTS.items()),
        OpaqueFunction(function=_nodes),
    ])
