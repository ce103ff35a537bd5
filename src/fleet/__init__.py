"""One robot among thousands: bags to object storage, disk rotation, metrics for the fleet.

Pure cores (no rclpy): :mod:`fleet.store` (the upload state in the robot's SQLite ledger file),
:mod:`fleet.upload` (resumable, verified multipart upload of a closed bag), :mod:`fleet.rotation`
(which verified bags may leave the disk). :mod:`fleet.cli` adds ``field_deploy bag upload`` and
``field_deploy bag rotate``.
"""
