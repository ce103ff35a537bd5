"""Fast DDS configuration: moved to :func:`field_deploy.rosenv.use_project_fastdds_profile`."""

from field_deploy.rosenv import use_project_fastdds_profile

__all__ = ['use_project_fastdds_profile']
