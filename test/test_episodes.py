"""Episode tracking from skill lifecycle transitions and runtime status (pure core)."""

from __future__ import annotations

import json

from data_recorder.capture.episodes import CUSTOM_DATA_KEY, EpisodeTracker, skill_of_topic

ACTIVE, INACTIVE, ERROR = 3, 2, 14


def test_skill_of_topic() -> None:
    assert skill_of_topic('/skills/reference_quadruped/stand_up/transition_event') == \
        'reference_quadruped/stand_up'
    assert skill_of_topic('/go2/skills/p/s/transition_event') == 'p/s'
    assert skill_of_topic('/skills/p/s/status') is None
    assert skill_of_topic('/joint_states') is None


def test_activation_opens_and_leaving_active_closes_an_episode() -> None:
    t = EpisodeTracker()
    t.on_status('p/stand', {'pack_version': '1.0.0', 'params': '{"v": 1.0}', 'phase': 'inactive'})
    assert t.on_transition('p/stand', 4, 'configuring', 10) is None
    kind, ep = t.on_transition('p/stand', ACTIVE, 'active', 100)
    assert (kind, ep.index, ep.start_ns) == ('start', 0, 100)
    assert (ep.pack_version, ep.params) == ('1.0.0', '{"v": 1.0}')
    assert t.on_transition('p/stand', ACTIVE, 'active', 150) is None  # no double start
    t.on_status('p/stand', {'phase': 'done', 'outcome': 'done', 'reason': 'reached the pose'})
    kind, ep = t.on_transition('p/stand', INACTIVE, 'inactive', 900)
    assert (kind, ep.end_ns, ep.outcome, ep.reason) == ('end', 900, 'done', 'reached the pose')
    assert ep.record('end')['end_ns'] == '900'


def test_late_status_updates_the_ended_episode() -> None:
    t = EpisodeTracker()
    t.on_transition('p/trot', ACTIVE, 'active', 1)
    _, ep = t.on_transition('p/trot', ERROR, 'errorprocessing', 5)
    assert ep.outcome == 'errorprocessing'
    update = t.on_status('p/trot', {'phase': 'failed', 'outcome': 'failed', 'reason': 'NaN target'})
    assert update is not None and update[0] == 'update'
    assert (ep.outcome, ep.reason) == ('failed', 'NaN target')
    assert t.on_status('p/trot', {'phase': 'failed', 'outcome': 'failed', 'reason': 'NaN target'}) is None


def test_close_interrupts_open_episodes_and_custom_data_round_trips() -> None:
    t = EpisodeTracker()
    t.on_transition('a/x', ACTIVE, 'active', 1)
    t.on_transition('b/y', ACTIVE, 'active', 2)
    t.on_transition('a/x', INACTIVE, 'inactive', 3)
    t.close(10)
    episodes = json.loads(t.custom_data()[CUSTOM_DATA_KEY])
    assert [(e['skill'], e['outcome'], e['end_ns']) for e in episodes] == [
        ('a/x', 'done', 3), ('b/y', 'interrupted', 10)]

