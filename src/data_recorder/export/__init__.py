"""Export: bags to training data (Parquet + MP4 tables, LeRobot datasets) and plots."""
