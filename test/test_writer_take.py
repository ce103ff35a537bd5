"""rcl's take through ctypes (:mod:`field_deploy.writer_take`): each sample with its writer's gid,
over real DDS, against the publishers' own gids as the graph lists them."""

from __future__ import annotations

import os

import rclpy
from rclpy.qos import QoSProfile
from std_msgs.msg import String

from field_deploy.ros import polled_subscription
from field_deploy.testing import wait_until
from field_deploy.writer_take import GID_SIZE, Taken, WriterTake


def test_each_sample_comes_with_its_writers_gid_and_number(ros: None) -> None:
    topic = f'writer_take_{os.getpid()}'
    publishing = rclpy.create_node('writer_take_pub')
    polled = rclpy.create_node('writer_take_sub')        # never spun: the samples wait for us
    try:
        pubs = [publishing.create_publisher(String, topic, 10) for _ in range(2)]
        sub = polled_subscription(polled, String, topic, QoSProfile(depth=100))
        take = WriterTake(sub)
        assert wait_until(lambda: all(p.get_subscription_count() == 1 for p in pubs), 10)
        for i in range(3):
            for k, pub in enumerate(pubs):
                pub.publish(String(data=f'{k}:{i}' + 'x' * 100_000 * i))   # grows the buffer
        got: list[Taken] = []
        assert wait_until(lambda: bool(got.extend(iter(take.take, None))) or len(got) == 6, 10)
        gids = {bytes(info.endpoint_gid)[:GID_SIZE]
                for info in polled.get_publishers_info_by_topic(topic)}    # the graph's own
        assert len({t.gid for t in got}) == 2
        by_writer: dict[bytes, list[tuple[int, str]]] = {}
        assert all(0 < t.source_ns <= t.received_ns for t in got)
        for data, seq, gid, _source, _received in got:
            text = data[8:].split(b'\0')[0].decode()
            by_writer.setdefault(gid, []).append((seq, text.rstrip('x')))
        for gid, samples in by_writer.items():
            assert gid in gids
            writer = samples[0][1].split(':')[0]
            assert samples == [(i + 1, f'{writer}:{i}') for i in range(3)], samples
        take.close()
        assert take.take() is None                         # closed: nothing, no crash
        polled.destroy_subscription(sub)
    finally:
        publishing.destroy_node()
        polled.destroy_node()
