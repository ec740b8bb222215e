#!/usr/bin/env python3
"""Extract PS3.15 Table E.1-1 (Application Level Confidentiality Profile Attributes) from the
standard's DocBook source (part15.xml) into the TSV kept at
dicomnode-core/src/deidentify/table_e1_1.tsv, and Table E.3.10-1 (Safe Private Attributes)
into safe_private.tsv beside it.
Usage: extract_confidentiality_table.py part15.xml table_e1_1.tsv [safe_private.tsv]
"""
import sys, re, xml.etree.ElementTree as ET
D = '{http://docbook.org/ns/docbook}'
XMLID = '{http://www.w3.org/XML/1998/namespace}id'
COLS = ["name", "tag", "retired", "in_std_comp_iod", "basic", "retain_safe_private",
        "retain_uids", "retain_device_identity", "retain_institution_identity",
        "retain_patient_characteristics", "retain_long_full_dates",
        "retain_long_modified_dates", "clean_descriptors", "clean_structured_content",
        "clean_graphics"]
EXPECTED_HEAD = ["Attribute Name", "Tag", "Retd. (from PS3.6)", "In Std. Comp. IOD (from PS3.3)",
                 "Basic Prof.", "Rtn. Safe Priv. Opt.", "Rtn. UIDs Opt.", "Rtn. Dev. Id. Opt.",
                 "Rtn. Inst. Id. Opt.", "Rtn. Pat. Chars. Opt.", "Rtn. Long. Full Dates Opt.",
                 "Rtn. Long. Modif. Dates Opt.", "Clean Desc. Opt.", "Clean Struct. Cont. Opt.",
                 "Clean Graph. Opt."]

ZWSP = '\u200b'  # zero-width spaces occur inside some names in the source; removed

def text(el):
    parts = []
    for e in el.iter():
        if e.tag == D + 'olink':
            parts.append(e.get('targetdoc') or '')
        if e.text: parts.append(e.text)
        if e is not el and e.tail: parts.append(e.tail)
    return re.sub(r'\s+', ' ', ''.join(parts).replace(ZWSP, '')).strip()

def paras(td):
    ps = td.findall(D + 'para')
    return [text(p) for p in ps] if ps else ([text(td)] if text(td) else [])

def main(src, out):
    root = ET.parse(src).getroot()
    sub = root.find(D + 'subtitle')
    print('edition:', sub.text if sub is not None else '?', file=sys.stderr)
    tbl = next(t for t in root.iter(D + 'table') if t.get(XMLID) == 'table_E.1-1')
    head = [text(th) for th in tbl.find(D + 'thead').find(D + 'tr').findall(D + 'th')]
    assert head == EXPECTED_HEAD, head
    rows, notes = [], []
    for tr in tbl.find(D + 'tbody').findall(D + 'tr'):
        tds = tr.findall(D + 'td')
        assert len(tds) == 15
        for td in tds:
            assert td.get('colspan', '1') == '1' and td.get('rowspan', '1') == '1'
        cells = []
        for i, td in enumerate(tds):
            ps = paras(td)
            if i == 0 and len(ps) > 1:
                notes.append((ps[0], ps[1:]))
                ps = ps[:1]
            assert len(ps) <= 1, ps
            cells.append(ps[0] if ps else '')
        rows.append(cells)
    with open(out, 'w', encoding='utf-8', newline='\n') as f:
        f.write('\t'.join(COLS) + '\n')
        for r in rows:
            assert not any('\t' in c for c in r)
            f.write('\t'.join(r) + '\n')
    for n in notes:
        print('annotation:', n, file=sys.stderr)
    print(len(rows), 'rows', file=sys.stderr)

def safe_private(src, out):
    """Table E.3.10-1, Safe Private Attributes: element, private creator, VR, VM, meaning."""
    root = ET.parse(src).getroot()
    tbl = next(t for t in root.iter(D + 'table') if t.get(XMLID) == 'table_E.3.10-1')
    head = [text(th) for th in tbl.find(D + 'thead').find(D + 'tr').findall(D + 'th')]
    assert head == ["Data Element", "Private Creator", "VR", "VM", "Meaning"], head
    rows = []
    for tr in tbl.find(D + 'tbody').findall(D + 'tr'):
        tds = tr.findall(D + 'td')
        assert len(tds) == 5, [text(td) for td in tds]
        cells = [' '.join(paras(td)) for td in tds]
        assert re.fullmatch(r'\([0-9A-Fa-f]{4},xx[0-9A-Fa-f]{2}\)', cells[0]), cells
        rows.append(cells)
    with open(out, 'w', encoding='utf-8', newline='\n') as f:
        f.write('element\tcreator\tvr\tvm\tmeaning\n')
        for r in rows:
            assert not any('\t' in c for c in r)
            f.write('\t'.join(r) + '\n')
    print(len(rows), 'safe private rows', file=sys.stderr)

if __name__ == '__main__':
    # extract_confidentiality_table.py part15.xml table_e1_1.tsv [safe_private.tsv]
    main(sys.argv[1], sys.argv[2])
    if len(sys.argv) > 3:
        safe_private(sys.argv[1], sys.argv[3])
