"""``bag export --format lerobot``: LeRobot v3.0 datasets written without LeRobot."""
