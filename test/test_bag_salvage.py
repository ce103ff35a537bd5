"""Salvage of damaged MCAP bags (pure, no DDS): ``bag recover`` and ``bag verify``.

Bags written by the project's writer (none / lz4 / zstd, small chunks so there are many) and by
foxglove's ``mcap`` Writer (with data-section CRCs), then damaged: cuts at seeded random points,
ranges overwritten in the middle, a zeroed 4 KiB block, a flipped chunk CRC, a damaged footer and
summary. The expected result is computed from the *undamaged original* read by ``mcap``: every
message of every chunk the damage did not touch must come back, read by ``mcap`` (with and
without the summary), ``rosbags`` and ``mcap_ros2``, and nothing that was not in the original.
"""

from __future__ import annotations

import io
import json
import random
import struct
from pathlib import Path

import pytest
from mcap.reader import make_reader
from mcap.records import Channel, Chunk, Message
from mcap.stream_reader import StreamReader, breakup_chunk
from mcap.writer import CompressionType
from mcap.writer import Writer as McapWriter
from mcap_ros2.decoder import DecoderFactory
from rosbags.highlevel import AnyReader

from data_recorder.bag import metadata as md
from data_recorder.bag.recover import recover
from data_recorder.bag.writer import BagWriter
from field_app import cli

pytestmark = pytest.mark.timeout(300)

TOPICS = ('/joint_states_text', '/diagnostics_text', '/events')
START = 1_764_000_000_000_000_000
N = 600
Msg = tuple[str, int, bytes]


def string_cdr(text: str) -> bytes:
    """std_msgs/String in CDR (little endian): what a real publisher sends."""
    raw = text.encode() + b'\0'
    return b'\x00\x01\x00\x00' + struct.pack('<I', len(raw)) + raw


def payload(i: int) -> tuple[str, bytes]:
    topic = TOPICS[i % 3]
    return topic, string_cdr(f'{topic} #{i} ' + 'x' * (i * 7 % 90))


def project_bag(root: Path, compression: str) -> Path:
    with BagWriter(root / 'bag', compression=compression, chunk_size=2048) as writer:
        for t in TOPICS:
            writer.add_topic(t, 'std_msgs/msg/String', [md.qos_dict(depth=10)])
        for i in range(N):
            writer.write(*payload(i), log_time=START + i * 1_000_000)
    return root / 'bag' / 'bag_0.mcap'


def mcap_bag(root: Path, compression: CompressionType) -> Path:
    """The independent writer: foxglove's ``mcap`` (chunk and data-section CRCs on)."""
    (root / 'ind').mkdir(parents=True)
    path = root / 'ind' / 'ind_0.mcap'
    with path.open('wb') as stream:
        writer = McapWriter(stream, chunk_size=3000, compression=compression,
                            enable_data_crcs=True)
        writer.start(profile='ros2', library='test')
        schema = writer.register_schema('std_msgs/msg/String', 'ros2msg', b'string data')
        ids = {t: writer.register_channel(t, 'cdr', schema, {'offered_qos_profiles': ''})
               for t in TOPICS}
        for i in range(N):
            topic, data = payload(i)
            writer.add_message(ids[topic], START + i * 1_000_000, data, START + i * 1_000_000, i)
        writer.finish()
    return path


def rosbags_bag(root: Path) -> Path:
    """The ``rosbags`` writer: 1 MiB chunks and **no CRCs** (its chunks cannot be verified)."""
    from rosbags.rosbag2 import StoragePlugin
    from rosbags.rosbag2 import Writer as RosbagsWriter
    from rosbags.typesys import Stores, get_typestore
    root.mkdir(parents=True, exist_ok=True)
    with RosbagsWriter(root / 'rb', version=9, storage_plugin=StoragePlugin.MCAP) as writer:
        conns = {t: writer.add_connection(t, 'std_msgs/msg/String',
                                          typestore=get_typestore(Stores.ROS2_JAZZY))
                 for t in TOPICS}
        for i in range(N):
            topic, _ = payload(i)
            writer.write(conns[topic], START + i * 1_000_000,
                         string_cdr(f'{topic} #{i} ' + 'y' * 16_000))
    return next((root / 'rb').glob('*.mcap'))


WRITERS = {
    'project-none': lambda root: project_bag(root, 'none'),
    'project-lz4': lambda root: project_bag(root, 'lz4'),
    'project-zstd': lambda root: project_bag(root, 'zstd'),
    'mcap-zstd': lambda root: mcap_bag(root, CompressionType.ZSTD),
    'mcap-none': lambda root: mcap_bag(root, CompressionType.NONE),
}


def original_chunks(path: Path) -> list[tuple[int, int, list[Msg]]]:
    """(start offset, end offset, messages) of every chunk of an undamaged file, read by mcap."""
    data = path.read_bytes()
    with path.open('rb') as stream:
        summary = make_reader(stream).get_summary()
    assert summary is not None
    out = []
    for index in sorted(summary.chunk_indexes, key=lambda c: c.chunk_start_offset):
        start, end = index.chunk_start_offset, index.chunk_start_offset + index.chunk_length
        chunk = next(iter(StreamReader(io.BytesIO(data[start:end]), skip_magic=True,
                                       emit_chunks=True).records))
        assert isinstance(chunk, Chunk)
        out.append((start, end, [(summary.channels[r.channel_id].topic, r.log_time, r.data)
                                 for r in breakup_chunk(chunk) if isinstance(r, Message)]))
    assert len(out) >= 8, 'the fixture must have many chunks'
    return out


def expected_after(chunks: list[tuple[int, int, list[Msg]]], damaged: tuple[int, int]) -> list[Msg]:
    """Messages of the chunks the damaged byte range [a, b) does not touch."""
    a, b = damaged
    return sorted(m for start, end, msgs in chunks if end <= a or start >= b for m in msgs)


def read_everywhere(bag: Path, path: Path) -> list[Msg]:
    """The recovered file's messages, read by mcap (summary and stream), rosbags and mcap_ros2:
    all four must agree."""
    with path.open('rb') as stream:
        indexed = sorted((c.topic, m.log_time, m.data) for _s, c, m in
                         make_reader(stream).iter_messages())
    channels: dict[int, str] = {}
    streamed = []
    with path.open('rb') as stream:
        for record in StreamReader(stream, validate_crcs=True).records:
            if isinstance(record, Channel):
                channels[record.id] = record.topic
            elif isinstance(record, Message):
                streamed.append((channels[record.channel_id], record.log_time, record.data))
    with AnyReader([bag]) as reader:
        via_rosbags = sorted((c.topic, t, bytes(raw)) for c, t, raw in reader.messages())
    with path.open('rb') as stream:
        decoded = sorted((c.topic, m.log_time, d.data) for _s, c, m, d in
                         make_reader(stream, decoder_factories=[DecoderFactory()])
                         .iter_decoded_messages())
    assert indexed == sorted(streamed) == via_rosbags
    assert [(t, lt) for t, lt, _ in decoded] == [(t, lt) for t, lt, _ in indexed]
    assert all(text.split(' #')[0] == topic for topic, _, text in decoded)
    return indexed


def damage_and_recover(tmp_path: Path, writer: str, damage) -> tuple[list[Msg], list[Msg], set[Msg],
                                                                     tuple[int, int], object]:
    """Write a bag, damage its file with ``damage(bytes) -> (bytes, (a, b))``, recover it."""
    path = WRITERS[writer](tmp_path)
    chunks = original_chunks(path)
    damaged, span = damage(bytearray(path.read_bytes()))
    path.write_bytes(bytes(damaged))
    report = recover(path.parent)
    assert report.files[0].recovered
    kept = path.with_name(path.name + ('.truncated' if len(damaged) < span[1] else '.damaged'))
    assert kept.read_bytes() == bytes(damaged), 'the original is kept beside, byte for byte'
    got = read_everywhere(path.parent, path)
    return got, expected_after(chunks, span), all_messages_from(chunks), span, report


def check(got: list[Msg], expected: list[Msg], original: set[Msg]) -> None:
    assert set(expected) <= set(got), f'{len(set(expected) - set(got))} intact messages missing'
    assert set(got) <= original, 'nothing that was not in the original'
    assert len(got) == len(set(got)), 'no message twice'


def all_messages(path: Path) -> set[Msg]:
    return all_messages_from(original_chunks(path))


def all_messages_from(chunks: list[tuple[int, int, list[Msg]]]) -> set[Msg]:
    return {m for _s, _e, msgs in chunks for m in msgs}


# -- damage kinds ------------------------------------------------------------------------------

@pytest.mark.parametrize('writer', [*sorted(WRITERS), 'rosbags'])
def test_random_cuts_keep_every_chunk_before_the_cut(tmp_path: Path, writer: str) -> None:
    source = (rosbags_bag if writer == 'rosbags' else WRITERS[writer])(tmp_path / 'src')
    chunks = original_chunks(source)
    original, everything = source.read_bytes(), all_messages(source)
    rng = random.Random(f'cuts-{writer}')
    points = 8 if writer == 'rosbags' else 24                   # 9 MB files: fewer
    cuts = [*sorted(rng.sample(range(9, len(original)), points)), len(original) - 5]   # + footer
    for n, cut in enumerate(cuts):
        bag = tmp_path / f'cut{n}'
        bag.mkdir()
        (bag / 'cut_0.mcap').write_bytes(original[:cut])
        report = recover(bag)
        got = read_everywhere(bag, bag / 'cut_0.mcap')
        expected = expected_after(chunks, (cut, len(original) + 1))
        check(got, expected, everything)
        assert set(got) == set(expected), f'cut at {cut}: the cut chunk is dropped whole'
        assert (bag / 'cut_0.mcap.truncated').read_bytes() == original[:cut]
        assert report.files[0].assessment.cut_only
        assert md.load(bag)['message_count'] == len(got)


@pytest.mark.parametrize('writer', sorted(WRITERS))
def test_overwritten_ranges_in_the_middle(tmp_path: Path, writer: str) -> None:
    rng = random.Random(f'overwrite-{writer}')
    for n in range(4):
        def damage(data: bytearray, n: int = n) -> tuple[bytearray, tuple[int, int]]:
            a = rng.randrange(len(data) // 5, len(data) * 3 // 5)
            b = a + rng.choice((1, 37, 600, 5000))
            data[a:b] = rng.randbytes(b - a)
            return data, (a, b)
        root = tmp_path / f'r{n}'
        got, expected, everything, span, report = damage_and_recover(root, writer, damage)
        check(got, expected, everything)
        _assert_report_names(report, span, touched=set(expected) != everything)


def _assert_report_names(report, span: tuple[int, int], touched: bool) -> None:
    a = report.files[0].assessment
    assert not a.intact, 'the damage is found'
    if not touched:                   # between the chunks: an index, a schema; nothing lost
        assert a.problems or a.lost, 'reported'
        assert not any(r.chunks for r in a.lost) and a.lost_messages in (0, None), a.as_dict()
        return
    assert a.lost, 'the damage is reported'
    assert any(r.start < span[1] and (r.end > span[0] or r.start >= span[0]) for r in a.lost), \
        (span, [(r.start, r.end) for r in a.lost])
    for r in a.lost:
        assert r.start_ns is not None or r.end_ns is not None, 'a time range for each region'
    custom = json.loads(md.load(report.bag)['custom_data']['data_recorder.salvage'])
    assert custom[report.files[0].path.name]['lost_ranges'], 'metadata.yaml records the loss'


def test_overwrite_loses_exactly_the_touched_chunks(tmp_path: Path) -> None:
    """Strict equality where the damaged chunk is certain: its middle overwritten."""
    for writer in ('project-zstd', 'project-none', 'mcap-zstd'):
        root = tmp_path / writer
        source = WRITERS[writer](root)
        chunks = original_chunks(source)
        everything = all_messages(source)
        start, _end, lost = chunks[len(chunks) // 2]
        data = bytearray(source.read_bytes())
        data[start + 60: start + 90] = b'\xa5' * 30
        source.write_bytes(bytes(data))
        report = recover(source.parent)
        got = read_everywhere(source.parent, source)
        assert set(got) == everything - set(lost)
        a = report.files[0].assessment
        assert a.lost_messages == len(lost) and a.lost_by_topic == _by_topic(lost)
        (region,) = a.lost
        assert region.start_ns == min(t for _, t, _ in lost)
        assert region.end_ns == max(t for _, t, _ in lost)
        assert region.topics == _by_topic(lost)


def _by_topic(messages: list[Msg]) -> dict[str, int]:
    out: dict[str, int] = {}
    for topic, _t, _d in messages:
        out[topic] = out.get(topic, 0) + 1
    return out


@pytest.mark.parametrize('writer', sorted(WRITERS))
def test_zeroed_4k_block(tmp_path: Path, writer: str) -> None:
    for n, where in enumerate((0.0, 0.3, 0.55)):
        def damage(data: bytearray, where: float = where) -> tuple[bytearray, tuple[int, int]]:
            a = int(len(data) * where) // 4096 * 4096
            b = min(a + 4096, len(data) - 200)
            data[a:b] = bytes(b - a)
            return data, (a, b)
        got, expected, everything, _span, _r = damage_and_recover(tmp_path / f'z{n}', writer,
                                                                  damage)
        check(got, expected, everything)
        assert len(got) >= len(expected) > 0


@pytest.mark.parametrize('writer', ['project-lz4', 'project-none', 'mcap-zstd'])
def test_flipped_chunk_crc_drops_that_chunk_only(tmp_path: Path, writer: str) -> None:
    source = WRITERS[writer](tmp_path)
    chunks = original_chunks(source)
    start, end, lost = chunks[3]
    data = bytearray(source.read_bytes())
    data[start + 9 + 24] ^= 0xFF                    # the uncompressed_crc field
    source.write_bytes(bytes(data))
    code, out = run_cli(['bag', 'verify', str(source)])
    assert code == 1 and 'chunk #3' in out and f'bytes {start}..{end}' in out and 'CRC' in out
    recover(source.parent)
    got = read_everywhere(source.parent, source)
    assert set(got) == all_messages_from(chunks) - set(lost)
    assert run_cli(['bag', 'verify', str(source.parent)])[0] == 0


@pytest.mark.parametrize('writer', ['project-zstd', 'mcap-none'])
@pytest.mark.parametrize('where', ['footer', 'summary', 'footer-and-summary'])
def test_damaged_footer_or_summary_keeps_every_message(tmp_path: Path, writer: str,
                                                       where: str) -> None:
    source = WRITERS[writer](tmp_path)
    chunks = original_chunks(source)
    data = bytearray(source.read_bytes())
    summary_start = struct.unpack_from('<Q', data, len(data) - 8 - 20)[0]
    if where in ('footer', 'footer-and-summary'):
        data[-30:-8] = b'\x00' * 22
    if where in ('summary', 'footer-and-summary'):
        data[summary_start + 20: summary_start + 60] = b'\xee' * 40
    source.write_bytes(bytes(data))
    assert run_cli(['bag', 'verify', str(source)])[0] == 1
    report = recover(source.parent)
    assert report.files[0].recovered
    assert set(read_everywhere(source.parent, source)) == all_messages_from(chunks)


def test_data_section_crc_catches_damage_outside_the_chunks(tmp_path: Path) -> None:
    """A message index record overwritten: every chunk CRC passes; the data-section CRC (set by
    the mcap writer) does not, verify says so, and recover rebuilds a clean index."""
    source = WRITERS['mcap-zstd'](tmp_path)
    chunks = original_chunks(source)
    data = bytearray(source.read_bytes())
    after_chunk = chunks[2][1]                      # the MessageIndex records follow the chunk
    assert data[after_chunk] == 0x07
    data[after_chunk + 12: after_chunk + 14] = b'\xff\xff'
    source.write_bytes(bytes(data))
    code, out = run_cli(['bag', 'verify', '--json', str(source)])
    assert code == 1
    (result,) = json.loads(out)
    assert result['data_section_crc'] == 'mismatch' and not result['bad_chunks']
    recover(source.parent)
    assert set(read_everywhere(source.parent, source)) == all_messages_from(chunks)


def test_resynchronises_after_garbage_and_keeps_both_sides(tmp_path: Path) -> None:
    """Several damaged regions in one file: each is reported, everything between is kept."""
    source = WRITERS['project-zstd'](tmp_path)
    chunks = original_chunks(source)
    data = bytearray(source.read_bytes())
    spans = [(chunks[2][0] + 5, chunks[2][0] + 900), (chunks[6][0] - 3, chunks[7][0] + 40)]
    rng = random.Random(7)
    for a, b in spans:
        data[a:b] = rng.randbytes(b - a)
    source.write_bytes(bytes(data))
    report = recover(source.parent)
    got = set(read_everywhere(source.parent, source))
    lost = {m for i in (2, 5, 6, 7) for m in chunks[i][2]} & (all_messages_from(chunks) - got)
    assert got == all_messages_from(chunks) - lost
    assert got >= {m for i, c in enumerate(chunks) if i not in (2, 5, 6, 7) for m in c[2]}
    assert len(report.files[0].assessment.lost) >= 2


# -- verify, refusal, idempotence --------------------------------------------------------------

def run_cli(argv: list[str]) -> tuple[int, str]:
    import contextlib
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli.main(argv)
    return code, out.getvalue()


def test_verify_says_when_chunks_have_no_crc(tmp_path: Path) -> None:
    """rosbags writes chunks without CRC: intact as far as can be told, and verify says so."""
    source = rosbags_bag(tmp_path)
    code, out = run_cli(['bag', 'verify', str(source.parent)])
    assert code == 0 and 'without CRC' in out, out


def test_verify_intact_bag_exits_0_and_recover_leaves_it_alone(tmp_path: Path) -> None:
    source = WRITERS['project-lz4'](tmp_path)
    before = source.read_bytes()
    code, out = run_cli(['bag', 'verify', str(source.parent)])
    assert code == 0 and 'intact' in out and f'{N} messages' in out
    report = recover(source.parent)
    assert not report.files[0].recovered and source.read_bytes() == before
    assert not list(source.parent.glob('*.damaged')) and not list(source.parent.glob('*.truncated'))
    source.rename(source.with_name('moved.mcap'))     # a file metadata.yaml lists has gone
    code, out = run_cli(['bag', 'verify', str(source.parent)])
    assert code == 1 and f'{source}: MISSING' in out


@pytest.mark.parametrize('kind', ['random', 'text', 'empty', 'dir-without-mcap', 'zeros'])
def test_not_mcap_refused_with_one_line_and_nothing_written(tmp_path: Path, kind: str,
                                                            capsys: pytest.CaptureFixture) -> None:
    bag = tmp_path / 'bag'
    bag.mkdir()
    target = bag / 'bag_0.mcap'
    if kind == 'random':
        target.write_bytes(random.Random(1).randbytes(100_000))
    elif kind == 'text':
        target.write_text('rosbag2_bagfile_information:\n  version: 9\n' * 50)
    elif kind == 'empty':
        target.write_bytes(b'')
    elif kind == 'zeros':
        target.write_bytes(bytes(50_000))
    else:
        target = bag
        (bag / 'notes.txt').write_text('hello')
    before = sorted((p.name, p.read_bytes()) for p in bag.iterdir())
    with pytest.raises((ValueError, FileNotFoundError), match=str(target.name)):
        recover(target)
    assert cli.main(['bag', 'recover', str(target)]) == 1
    assert cli.main(['bag', 'verify', str(target)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(str(target) in line for line in err), err
    assert sorted((p.name, p.read_bytes()) for p in bag.iterdir()) == before, 'nothing written'


def test_bag_with_one_good_and_one_junk_file_is_refused_whole(tmp_path: Path) -> None:
    source = WRITERS['project-none'](tmp_path)
    data = source.read_bytes()
    source.write_bytes(data[: len(data) // 2])      # cut: recoverable
    (source.parent / 'bag_1.mcap').write_bytes(b'not a bag at all' * 100)
    with pytest.raises(ValueError, match=r'bag_1\.mcap'):
        recover(source.parent)
    assert not (source.parent / 'bag_0.mcap.truncated').exists()


def test_empty_file_beside_real_ones_is_a_crash_at_a_split(tmp_path: Path) -> None:
    """Killed right after a split created the next file: the bag comes back whole, the empty
    file rebuilt as an empty MCAP (readers refuse a bag with a 0-byte file)."""
    source = WRITERS['project-zstd'](tmp_path)
    everything = all_messages(source)
    (source.parent / 'metadata.yaml').unlink()
    (source.parent / 'bag_1.mcap').write_bytes(b'')
    report = recover(source.parent)
    assert [f.recovered for f in report.files] == [False, True]
    assert (source.parent / 'bag_1.mcap.truncated').read_bytes() == b''
    with AnyReader([source.parent]) as reader:
        assert {(c.topic, t, bytes(raw)) for c, t, raw in reader.messages()} == everything
    assert run_cli(['bag', 'verify', str(source.parent)])[0] == 0


def test_seeded_random_damage_of_every_kind(tmp_path: Path) -> None:
    """40 seeded trials over every writer: overwrites, zeroed ranges, bit flips, several regions,
    damage then a cut. Every message of every untouched chunk comes back, except those of a
    channel whose every record was lost (a cut file whose first chunk was damaged: the report
    counts them as orphans), and nothing that was not in the original."""
    rng = random.Random(2026)
    sources = {w: make(tmp_path / f'src-{w}') for w, make in WRITERS.items()}
    originals = {w: (p.read_bytes(), original_chunks(p)) for w, p in sources.items()}
    for trial in range(40):
        writer = rng.choice(sorted(sources))
        original, chunks = originals[writer]
        data = bytearray(original)
        kind = rng.choice(['overwrite', 'zero', 'flip', 'multi', 'cut'])
        spans = []
        for _ in range(rng.randint(2, 4) if kind == 'multi' else 1):
            a = rng.randrange(len(data) - 1)
            b = min(len(data), a + rng.choice((1, 8, 50, 400, 4096)))
            if kind == 'zero':
                data[a:b] = bytes(b - a)
            elif kind == 'flip':
                b = a + 1
                data[a] ^= 1 << rng.randrange(8)
            else:
                data[a:b] = rng.randbytes(b - a)
            spans.append((a, b))
        if kind == 'cut':
            cut = rng.randrange(spans[0][1], len(data) + 1)
            data = data[:cut]
            spans.append((cut, len(original) + 1))
        bag = tmp_path / f't{trial}'
        bag.mkdir()
        (bag / 'x_0.mcap').write_bytes(bytes(data))
        report = recover(bag)
        got = set(read_everywhere(bag, bag / 'x_0.mcap'))
        expected = {m for start, end, msgs in chunks
                    if all(end <= a or start >= b for a, b in spans) for m in msgs}
        a = report.files[0].assessment
        orphans = a.orphans if a is not None else 0
        assert len(expected - got) <= orphans, (trial, writer, kind, spans)
        assert got <= all_messages_from(chunks), (trial, writer, kind, spans)


def test_lone_mcap_file_is_salvaged_without_a_metadata_yaml_beside_it(tmp_path: Path) -> None:
    """A .mcap file in some folder (not a rosbag2 directory): the file is rebuilt, the folder
    gets no metadata.yaml and the other files there are not touched."""
    source = WRITERS['mcap-zstd'](tmp_path)
    chunks = original_chunks(source)
    lone = tmp_path / 'downloads' / 'drive.mcap'
    lone.parent.mkdir()
    data = bytearray(source.read_bytes())
    data[chunks[4][0] + 50] ^= 0x10
    lone.write_bytes(bytes(data))
    (lone.parent / 'other.mcap').write_bytes(b'unrelated')
    report = recover(lone)
    assert report.metadata_path is None and not (lone.parent / 'metadata.yaml').exists()
    assert (lone.parent / 'other.mcap').read_bytes() == b'unrelated'
    with lone.open('rb') as stream:
        got = {(c.topic, m.log_time, m.data) for _s, c, m in make_reader(stream).iter_messages()}
    assert got == all_messages_from(chunks) - set(chunks[4][2])
