"""Episodes: every skill activation is one, bounded by the skill's lifecycle transitions.

The recorder hears two standard streams of the skill runtime: each skill's
``/skills/<pack>/<skill>/transition_event`` (lifecycle_msgs/TransitionEvent) says *when* a skill
became active and when it left, and ``/skill_runtime/status`` (diagnostic_msgs/DiagnosticArray)
says *what* ran (pack version, parameters) and how it ended (outcome, reason). This pure core
joins them into episode records; the recorder writes each boundary as an MCAP Metadata record
named ``episode`` (so a cut bag still has them) and the finished list into ``metadata.yaml``
custom data. No rclpy import here.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field

EPISODE_RECORD = 'episode'
CUSTOM_DATA_KEY = 'field_deploy.episodes'
TRANSITION_TOPIC = re.compile(r'^(?P<ns>.*)/skills/(?P<pack>[^/]+)/(?P<skill>[^/]+)/transition_event$')
ACTIVE = 3  # lifecycle_msgs/State.PRIMARY_STATE_ACTIVE


def skill_of_topic(topic: str) -> str | None:
    """``/skills/<pack>/<skill>/transition_event`` → ``<pack>/<skill>``; None for other topics."""
    match = TRANSITION_TOPIC.match(topic)
    return f'{match["pack"]}/{match["skill"]}' if match else None


@dataclass
class Episode:
    index: int
    skill: str
    start_ns: int
    pack_version: str = ''
    params: str = '{}'
    end_ns: int | None = None
    outcome: str = ''
    reason: str = ''
    end_state: str = ''

    def record(self, event: str) -> dict[str, str]:
        """The MCAP Metadata map of a boundary (all values are strings, as MCAP requires)."""
        out = {'event': event, **{k: '' if v is None else str(v) for k, v in asdict(self).items()}}
        return out


@dataclass
class EpisodeTracker:
    """Joins transition events and runtime status into episodes.

    ``on_transition`` returns ``('start' | 'end', episode)`` when a boundary happens, for the
    recorder to write and (optionally) to split the bag on.
    """

    episodes: list[Episode] = field(default_factory=list)
    _open: dict[str, Episode] = field(default_factory=dict)
    _status: dict[str, dict[str, str]] = field(default_factory=dict)

    def on_status(self, skill: str, values: dict[str, str]) -> tuple[str, Episode] | None:
        """Latest key-values of one skill's status (pack_version, params, outcome, reason…).

        The runtime's status may arrive just after the transition event that ended an episode;
        when it brings that episode's outcome, returns ``('update', episode)`` so the recorder
        writes the corrected record (records are merged last-wins when read back).
        """
        self._status[skill] = dict(values)
        episode = self._open.get(skill)
        if episode is not None:
            episode.pack_version = values.get('pack_version', episode.pack_version)
            episode.params = values.get('params', episode.params)
            return None
        last = next((e for e in reversed(self.episodes) if e.skill == skill), None)
        outcome, reason = values.get('outcome', ''), values.get('reason', '')
        if last is not None and last.end_ns is not None and outcome and (
                outcome, reason) != (last.outcome, last.reason) and values.get('phase') != 'active':
            last.outcome, last.reason = outcome, reason
            return 'update', last
        return None

    def on_transition(self, skill: str, goal_state_id: int, goal_label: str,
                      stamp_ns: int) -> tuple[str, Episode] | None:
        if goal_state_id == ACTIVE and skill not in self._open:
            status = self._status.get(skill, {})
            episode = Episode(index=len(self.episodes), skill=skill, start_ns=stamp_ns,
                              pack_version=status.get('pack_version', ''),
                              params=status.get('params', '{}'))
            self.episodes.append(episode)
            self._open[skill] = episode
            return 'start', episode
        if goal_state_id != ACTIVE and skill in self._open:
            episode = self._open.pop(skill)
            episode.end_ns = stamp_ns
            episode.end_state = goal_label
            self.finish_from_status(episode)
            return 'end', episode
        return None

    def finish_from_status(self, episode: Episode) -> None:
        """Fill outcome / reason from the runtime's status (it may arrive just after the event)."""
        status = self._status.get(episode.skill, {})
        episode.outcome = status.get('outcome') or episode.outcome or (
            'done' if episode.end_state == 'inactive' else episode.end_state)
        episode.reason = status.get('reason', episode.reason)

    def close(self, stamp_ns: int) -> None:
        """At the end of the recording, end open episodes as ``interrupted``."""
        for skill in list(self._open):
            episode = self._open.pop(skill)
            episode.end_ns = stamp_ns
            episode.outcome = 'interrupted'
            episode.reason = 'recording stopped while the skill was active'

    def custom_data(self) -> dict[str, str]:
        """``metadata.yaml`` custom_data entry (rosbag2 keeps custom data as string → string)."""
        return {CUSTOM_DATA_KEY: json.dumps([asdict(e) for e in self.episodes])}

