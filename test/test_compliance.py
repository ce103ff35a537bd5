"""China RoHS checks (GB 26572-2025 limits, exemptions by clause), declaration files and the
disclosure table: pure, fast, on the shipped rules file and declarations."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from health_monitor.compliance import (
    Declaration,
    Evidence,
    Installed,
    MaterialDeclaration,
    RulesError,
    disclose,
    judge,
    judge_material,
    load_rules,
)
from health_monitor.declarations import (
    DeclarationError,
    default_declarations_dir,
    load_declaration,
    load_declarations,
)
from health_monitor.rohs import as_dict, render, robot_disclosure

RULES = load_rules()
KEYS = RULES.keys
LIMITS = {s.key: s.limit_mg_kg for s in RULES.substances}


def material(values: dict[str, float | None], kind: str = 'polymer',
             exemptions: tuple[tuple[str, str], ...] = (), name: str = 'm') -> MaterialDeclaration:
    full: dict[str, float | None] = {k: 0.0 for k in KEYS}
    full.update(values)
    return MaterialDeclaration(name, kind, full, exemptions)


def finding(m: MaterialDeclaration, key: str):
    return next(f for f in judge_material(RULES, m).findings if f.substance == key)


# ------------------------------------------------------------------------------ the rules file

def test_rules_file_names_its_source_and_sets_the_ten_limits() -> None:
    assert RULES.standard['number'] == 'GB 26572-2025'
    assert RULES.standard['published'] == '2025-08-01'
    assert RULES.standard['sources'] and RULES.exemption_source
    assert KEYS == ('Pb', 'Hg', 'Cd', 'Cr(VI)', 'PBB', 'PBDE', 'DEHP', 'BBP', 'DBP', 'DIBP')
    assert dict(LIMITS) == {**dict.fromkeys(KEYS, 1000.0), 'Cd': 100.0}   # 0.1 %; Cd 0.01 %
    assert RULES.marking['standard'].startswith('SJ/T 11364')
    # every clause text not checked against the published list says so
    assert all(not e.verbatim for e in RULES.exemptions.values())


def test_a_bad_rules_file_names_file_and_key(tmp_path: Path) -> None:
    text = RULES.path.read_text().replace('limit_percent: 0.01}', 'limit_percent: -1}')
    bad = tmp_path / 'rules.yaml'
    bad.write_text(text)
    with pytest.raises(RulesError) as err:
        load_rules(bad)
    assert str(err.value) == f'{bad}: substances[2].limit_percent: -1 is not a percentage > 0'


# ------------------------------------------------------------------------------ limits

@pytest.mark.parametrize('key', KEYS)
def test_each_substance_at_just_under_and_just_over_its_limit(key: str) -> None:
    limit = LIMITS[key]
    assert finding(material({key: limit}), key).status == 'compliant'           # "<= limit"
    assert finding(material({key: limit - 0.1}), key).status == 'compliant'
    over = finding(material({key: limit + 0.1}), key)
    assert over.status == 'non_compliant'
    assert (over.value_mg_kg, over.limit_mg_kg) == (limit + 0.1, limit)
    assert over.reason == 'no exemption claimed'
    # the other nine substances of the material are untouched by this one's value
    others = [f for f in judge_material(RULES, material({key: limit + 0.1})).findings
              if f.substance != key]
    assert {f.status for f in others} == {'compliant'}


def test_percent_declarations_compare_exactly_at_the_limit(tmp_path: Path) -> None:
    path = tmp_path / 'pct.yaml'
    path.write_text(textwrap.dedent('''\
        model: PCT-1
        supplier: s
        declaration: {ref: r.pdf, date: '2026-01-01'}
        unit: '%'
        parts:
        - name: cd at limit
          material: polymer
          substances: {Pb: 0.1, Hg: 0.1, Cd: 0.01, Cr(VI): 0.1, PBB: 0.1, PBDE: 0.1,
                       DEHP: 0.1, BBP: 0.1, DBP: 0.1, DIBP: 0.1}
        - name: cd over
          material: polymer
          substances: {Pb: 0, Hg: 0, Cd: 0.0101, Cr(VI): 0, PBB: 0, PBDE: 0,
                       DEHP: 0, BBP: 0, DBP: 0, DIBP: 0}
        '''))
    result = judge(RULES, 'PCT-1', load_declaration(path, RULES))
    at, over = result.materials
    assert at.status == 'compliant'
    assert over.status == 'non_compliant'
    assert finding(load_declaration(path, RULES).materials[1], 'Cd').value_mg_kg == 101.0


# ------------------------------------------------------------------------------ exemptions

def test_exemption_inside_its_clause() -> None:
    m = material({'Pb': 32000.0}, 'copper_alloy', (('6(c)', 'bushing machinability'),))
    f = finding(m, 'Pb')
    assert (f.status, f.clause) == ('exempt', '6(c)')
    assert judge_material(RULES, m).status == 'exempt'
    assert finding(material({'Pb': 40000.0}, 'copper_alloy', (('6(c)', 'j'),)), 'Pb').status \
        == 'exempt'   # exactly the clause's 4 % ceiling


def test_exemption_outside_its_clause_is_a_breach_with_the_reason() -> None:
    claim = (('6(c)', 'j'),)
    over_cap = finding(material({'Pb': 41000.0}, 'copper_alloy', claim), 'Pb')
    assert over_cap.status == 'non_compliant'
    assert over_cap.reason == 'clause 6(c) allows up to 40000 mg/kg, declared 41000'
    wrong_substance = finding(material({'Cd': 150.0}, 'copper_alloy', claim), 'Cd')
    assert wrong_substance.status == 'non_compliant'
    assert wrong_substance.reason == 'clause 6(c) covers Pb, not Cd'
    wrong_material = finding(material({'Pb': 3000.0}, 'steel', claim), 'Pb')
    assert wrong_material.status == 'non_compliant'
    assert wrong_material.reason == 'clause 6(c) covers copper_alloy, not steel'
    # a second claim that does cover it wins
    both = finding(material({'Pb': 3000.0}, 'steel', (('6(c)', 'j'), ('6(a)-I', 'j'))), 'Pb')
    assert (both.status, both.clause) == ('exempt', '6(a)-I')


def test_undeclared_substance_and_the_worst_status() -> None:
    gap = material({'DIBP': None})
    f = finding(gap, 'DIBP')
    assert (f.status, f.value_mg_kg) == ('undeclared', None)
    decl = Declaration('M', 's', Evidence('r', '2026-01-01'), None,
                       (gap, material({'Pb': 32000.0}, 'copper_alloy', (('6(c)', 'j'),))), 'x')
    result = judge(RULES, 'M', decl)
    assert result.status == 'undeclared'              # undeclared is worse than exempt
    assert result.mark('DIBP') == '?' and result.mark('Pb') == 'X' and result.mark('Hg') == 'O'
    breach = Declaration('M', 's', Evidence('r', '2026-01-01'), None,
                         (gap, material({'Hg': 1001.0})), 'x')
    assert judge(RULES, 'M', breach).status == 'non_compliant'   # and a breach worse still
    nothing = judge(RULES, 'UNKNOWN', None)
    assert (nothing.status, nothing.declared, nothing.mark('Pb')) == ('undeclared', False, '?')


# ------------------------------------------------------------------------------ the table

def test_disclosure_rows_marks_and_efup() -> None:
    decls = {
        'MOT': Declaration('MOT', 's', Evidence('r', '2026-01-01'), 20,
                           (material({'Pb': 32000.0}, 'copper_alloy', (('6(c)', 'j'),)),), 'x'),
        'CPU': Declaration('CPU', 's', Evidence('r', '2026-01-01'), 10,
                           (material({'Pb': 52000.0}, 'glass', (('7(c)-I', 'j'),)),), 'x'),
        'BAT': Declaration('BAT', 's', Evidence('r', '2026-01-01'), 5, (material({}),), 'x'),
    }
    installed = [Installed('j1', 'motor', 'MOT', 'a'), Installed('j2', 'motor', 'MOT', 'b'),
                 Installed('battery', 'battery', 'BAT', 'c')]
    d = disclose(RULES, 'bot', installed, decls, 'test')
    assert list(d.rows) == ['Joint motors (关节电机)', 'Battery pack (电池组)']
    assert d.rows['Joint motors (关节电机)']['Pb'] == 'X'
    assert set(d.rows['Battery pack (电池组)'].values()) == {'O'}
    assert d.efup_years == 20     # the battery's 5 y does not count: it carries no X
    d2 = disclose(RULES, 'bot', [*installed, Installed('compute', 'compute', 'CPU', 'd')],
                  decls, 'test')
    assert (d2.efup_years, d2.mark) == (10, 'EFUP 10')   # the shortest of the parts with an X
    d3 = disclose(RULES, 'bot', [installed[2]], decls, 'test')
    assert d3.mark == 'e'
    no_efup = {**decls, 'MOT': Declaration('MOT', 's', Evidence('r', '2026-01-01'), None,
                                           decls['MOT'].materials, 'x')}
    assert disclose(RULES, 'bot', installed, no_efup, 'test').mark == 'EFUP ?'


@pytest.mark.parametrize('robot', ['humanoid_29dof', 'quadruped_12dof'])
def test_shipped_robots_tables(robot: str, tmp_path: Path) -> None:
    """Shipped data: motors exempt by 6(c), the camera's cable phthalates undeclared."""
    d = robot_disclosure(robot, tmp_path / 'no-ledger.sqlite')
    assert 'components file' in d.source
    assert d.rows['Joint motors (关节电机)']['Pb'] == 'X'
    assert [d.rows['Sensors (传感器)'][k] for k in ('DEHP', 'BBP', 'DBP', 'DIBP')] == ['?'] * 4
    assert set(d.rows['Wiring harness (线束)'].values()) == {'O'}
    assert d.efup_years == 20 and d.status == 'undeclared'
    issues = as_dict(d)['issues']
    assert {i['clause'] for i in issues if i['status'] == 'exempt'} == {'6(c)'}
    assert {(i['model'], i['substance']) for i in issues if i['status'] == 'undeclared'} == {
        ('FD-RGB-640', k) for k in ('DEHP', 'BBP', 'DBP', 'DIBP')}
    assert not [i for i in issues if i['status'] == 'non_compliant']
    md = render(d, 'md')
    assert 'exempt by clause 6(c)' in md and '[paraphrased]' in md
    assert 'FD-RGB-640 / USB cable jacket (PVC) (polymer): DEHP, BBP, DBP, DIBP not declared' in md
    csv_lines = render(d, 'csv').splitlines()
    assert csv_lines[0] == 'part,' + ','.join(KEYS) + ',efup_years'
    assert csv_lines[1] == 'Joint motors (关节电机),X,O,O,O,O,O,O,O,O,O,20'


def test_every_shipped_declaration_loads_once_per_model() -> None:
    decls = load_declarations(default_declarations_dir(), RULES)
    assert 'FD-IMU-9A' in decls and decls['FD-IMU-9A'].source.endswith('.csv')
    assert all(d.evidence.ref and d.evidence.date for d in decls.values())
    exempt = [(m.name, c) for d in decls.values() for m in d.materials for c, _ in m.exemptions]
    assert exempt and all(j for d in decls.values() for m in d.materials for _, j in m.exemptions)


# ------------------------------------------------------------------------------ bad files

GOOD_YAML = '''\
model: T-1
supplier: s
declaration: {ref: r.pdf, date: '2026-01-01', lab: L}
parts:
- name: bushing
  material: copper_alloy
  substances: {Pb: 32000, Hg: ND, Cd: 3, Cr(VI): ND, PBB: ND, PBDE: ND, DEHP: ND, BBP: ND,
               DBP: ND, DIBP: ND}
  exemptions:
  - {clause: 6(c), justification: machinability}
'''


@pytest.mark.parametrize('old, new, expected', [
    ('Pb: 32000', 'Pb: lots', "bushing: Pb: 'lots' is not a concentration in mg/kg "
                              '(a number, ND, or empty for undeclared)'),
    ('Cd: 3', 'Cd: -3', "bushing: Cd: -3 must be a concentration >= 0"),
    ('Cd: 3', 'Cd: 3, Sb: 4', 'bushing: Sb: unknown substance (one of Pb, Hg, Cd, Cr(VI), PBB, '
                              'PBDE, DEHP, BBP, DBP, DIBP)'),
    ('clause: 6(c)', 'clause: 6(z)', "bushing: exemption: unknown clause '6(z)' (the rules file "
                                     'gb26572_2025.yaml lists 6(a)-I, 6(b)-I, 6(c), 7(a), 7(c)-I)'),
    (', justification: machinability', '', 'bushing: justification: missing'),
    ('material: copper_alloy', 'material: brass', "bushing: material: unknown material class "
                                                  "'brass' (one of aluminium_alloy, cell_chemistry, "
                                                  'ceramic, coating, copper_alloy, dielectric_ceramic, '
                                                  'elastomer, glass, magnet, other, other_metal, '
                                                  'pcb_laminate, polymer, solder, steel)'),
    ("date: '2026-01-01'", "date: '2026-13-01'",
     "<declaration>: declaration.date: '2026-13-01' is not a date YYYY-MM-DD"),
    ('supplier: s\n', '', '<declaration>: supplier: missing'),
    ('parts:', 'efup_years: 2.5\nparts:',
     "<declaration>: efup_years: 2.5 is not a whole number of years > 0"),
    ('parts:', 'suplier: x\nparts:', '<declaration>: suplier: unknown key (expected declaration, '
                                     'efup_years, model, parts, supplier, unit)'),
])
def test_bad_yaml_declaration_error_form(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in GOOD_YAML
    path = tmp_path / 'T-1.yaml'
    path.write_text(GOOD_YAML.replace(old, new))
    with pytest.raises(DeclarationError) as err:
        load_declaration(path, RULES)
    assert str(err.value) == f'{path}: {expected}'


def test_good_yaml_and_broken_yaml(tmp_path: Path) -> None:
    path = tmp_path / 'T-1.yaml'
    path.write_text(GOOD_YAML)
    assert judge(RULES, 'T-1', load_declaration(path, RULES)).status == 'exempt'
    path.write_text(GOOD_YAML + '  - [unclosed\n')
    with pytest.raises(DeclarationError, match=rf'^{path}: <declaration>: <yaml>: not valid YAML'):
        load_declaration(path, RULES)


CSV_HEAD = ('model,supplier,declaration_ref,declaration_date,part,material,'
            + ','.join(KEYS) + ',exemption_clause,exemption_justification')
CSV_ROW = 'T-2,s,r.pdf,2026-01-01,{part},copper_alloy,{pb},ND,ND,ND,ND,ND,ND,ND,ND,{dibp},{clause},{why}'


def _csv(tmp_path: Path, *rows: str, head: str = CSV_HEAD) -> Path:
    path = tmp_path / 'T-2.csv'
    path.write_text('\n'.join((head, *rows)) + '\n')
    return path


def test_csv_declaration_reads_values_undeclared_and_exemption(tmp_path: Path) -> None:
    path = _csv(tmp_path, CSV_ROW.format(part='contacts', pb=850, dibp='', clause='', why=''),
                CSV_ROW.format(part='bushing', pb=32000, dibp='ND', clause='6(c)', why='machining'))
    decl = load_declaration(path, RULES)
    contacts, bushing = judge(RULES, 'T-2', decl).materials
    assert contacts.status == 'undeclared' and bushing.status == 'exempt'
    assert decl.materials[1].exemptions == (('6(c)', 'machining'),)


@pytest.mark.parametrize('rows, head, expected', [
    ([CSV_ROW.format(part='bushing', pb='-1', dibp='', clause='', why='')], CSV_HEAD,
     "bushing: Pb: '-1' must be a concentration >= 0"),
    ([CSV_ROW.format(part='bushing', pb='1,5', dibp='', clause='', why='')], CSV_HEAD,
     'bushing: <row>: more cells than columns'),
    ([CSV_ROW.format(part='bushing', pb=32000, dibp='', clause='6(c)', why='')], CSV_HEAD,
     'bushing: justification: missing'),
    ([CSV_ROW.format(part='a', pb=1, dibp='', clause='', why=''),
      CSV_ROW.format(part='b', pb=1, dibp='', clause='', why='').replace('T-2', 'T-3')], CSV_HEAD,
     "b: model: 'T-3' differs from the first row's 'T-2' (one model per file)"),
    ([CSV_ROW.format(part='a', pb=1, dibp='', clause='', why='')],
     CSV_HEAD.replace(',DIBP', ',DiBP'), '<declaration>: DiBP: unknown column (expected model, '
     'supplier, declaration_ref, declaration_date, declaration_lab, efup_years, unit, part, '
     'material, exemption_clause, exemption_justification, report_ref, report_date, report_lab, '
     'Pb, Hg, Cd, Cr(VI), PBB, PBDE, DEHP, BBP, DBP, DIBP)'),
    ([CSV_ROW.format(part='', pb=1, dibp='', clause='', why='')], CSV_HEAD, 'row 2: part: missing'),
    ([], CSV_HEAD, '<declaration>: <file>: no rows (expected a header and one row per material)'),
])
def test_bad_csv_declaration_error_form(tmp_path: Path, rows: list[str], head: str,
                                        expected: str) -> None:
    path = _csv(tmp_path, *rows, head=head)
    with pytest.raises(DeclarationError) as err:
        load_declaration(path, RULES)
    assert str(err.value) == f'{path}: {expected}'


def test_a_model_declared_twice_is_refused(tmp_path: Path) -> None:
    (tmp_path / 'a.yaml').write_text(GOOD_YAML)
    (tmp_path / 'b.yaml').write_text(GOOD_YAML)
    with pytest.raises(DeclarationError) as err:
        load_declarations(tmp_path, RULES)
    assert str(err.value) == f"{tmp_path / 'b.yaml'}: <declaration>: model: 'T-1' is also " \
                             'declared in a.yaml'


# ------------------------------------------------------------------------------ into the bag

def test_bag_metadata_carries_the_table_and_never_raises(tmp_path: Path) -> None:
    """What the recorder's hook writes: an MCAP metadata record and a metadata.yaml entry
    (through the recorder engine the node uses, from the hook's background thread)."""
    import json

    import yaml
    from mcap.reader import make_reader

    from data_recorder.capture.recorder import Recorder, RecorderConfig
    from health_monitor.rohs import BAG_KEY, bag_metadata, write_into_bag

    entry = bag_metadata('quadruped_12dof', tmp_path / 'no-ledger.sqlite')[BAG_KEY]
    table = json.loads(entry)
    assert table['robot'] == 'quadruped_12dof' and table['efup_years'] == 20
    assert {r['part'] for r in table['rows']} >= {'Joint motors (关节电机)', 'Compute unit (计算单元)'}
    broken = json.loads(bag_metadata('no_such_robot')[BAG_KEY])
    assert broken['robot'] == 'no_such_robot' and 'no_such_robot' in broken['error']

    recorder = Recorder(RecorderConfig(output=str(tmp_path / 'bag')))
    write_into_bag(recorder, 'quadruped_12dof', ledger=tmp_path / 'no-ledger.sqlite').join(60)
    path = recorder.close()
    (mcap,) = path.glob('*.mcap')
    with mcap.open('rb') as f:
        records = {m.name: m.metadata for m in make_reader(f).iter_metadata()}
    assert json.loads(records[BAG_KEY]['json']) == table
    info = yaml.safe_load((path / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    assert json.loads(info['custom_data'][BAG_KEY]) == table
