"""Replay: the playback schedule (pure) and its ROS shell, ``bag_player``."""
