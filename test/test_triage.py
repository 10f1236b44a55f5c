"""Triage priority (issue 23, item 3; DESIGN.md "Triage priority and FHIR"): CHEXNET_PRIORITY_RULES parsed at
start with one sentence per mistake, codes checked once the bundles load (a /ready problem), each prediction's
study-level priority in the REST JSON, the CLI's JSON lines, the audit row, the metrics and the SR (dciodvfy),
and the DICOM node sending stat results first."""

import io
import json
import re

import pydicom
import pytest

from api_helpers import assert_error, conforms, make_env, predict, ready_app
from chexnet.cli import main
from chexnet.dicom_node.spool import Spool
from chexnet.dicom_results import PRIORITY, QUALITATIVE_EVALUATIONS, SCHEME
from chexnet.service import SettingsError
from chexnet.triage import PriorityRulesError, Rule, Triage, parse_rules, unknown
from dicom_node_helpers import CHEST, Destination, Node, free_port
from dicom_tools import dciodvfy_errors, storescu
from waiting import wait_until

DICOM_ACCEPT = 'multipart/related; type="application/dicom"'
CODES = {"cxr10": ["atelectasis", "pneumothorax", "pleural_effusion"], "cxr25": ["pneumothorax", "emphysema"]}
# Every rule fires on any image but the last (no probability reaches 1 from a sigmoid of demo weights):
# stat from an unscoped rule, urgent from a rule scoped to cxr10.
RULES = "pneumothorax>=0:stat, cxr10:pleural_effusion>=0:urgent, atelectasis>=1:stat"


def sentences(message: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.)])\s+(?=[A-Z-])", message) if s]


# --- parsing ------------------------------------------------------------------------------------------
def test_rules_parse_scoped_and_unscoped():
    rules = parse_rules(" pneumothorax>=0.7:stat , cxr10:pleural_effusion >= 0.8:URGENT,,")
    assert rules == (Rule(None, "pneumothorax", 0.7, "stat"), Rule("cxr10", "pleural_effusion", 0.8, "urgent"))
    assert [r.text for r in rules] == ["pneumothorax>=0.7:stat", "cxr10:pleural_effusion>=0.8:urgent"]
    assert parse_rules("") == () and parse_rules(None) == ()


@pytest.mark.parametrize(
    "rule, says",
    [
        ("pneumothorax>0.7:stat", "is not of the form [model:]code>=probability:level"),
        ("pneumothorax>=0.7", "is not of the form"),
        ("a:b:pneumothorax>=0.7:stat", "is not of the form"),
        ("pneumothorax>=high:stat", "has 'high' where a probability from 0 to 1 belongs"),
        ("pneumothorax>=1.5:stat", "has probability 1.5, outside 0 to 1"),
        ("pneumothorax>=-0.1:stat", "outside 0 to 1"),
        ("pneumothorax>=nan:stat", "outside 0 to 1"),
        ("pneumothorax>=0.7:critical", "has the unknown level 'critical'; use urgent or stat"),
        ("pneumothorax>=0.7:routine", "unknown level 'routine'"),
    ],
)
def test_each_mistake_is_one_sentence_naming_the_setting(rule, says):
    with pytest.raises(PriorityRulesError) as caught:
        parse_rules(f"mass>=0.5:urgent,{rule}")
    (sentence,) = caught.value.sentences
    assert sentence.startswith(f"CHEXNET_PRIORITY_RULES rule '{rule}'") and says in sentence
    assert sentence.endswith(".")


def test_a_rule_given_twice_counts_once_and_a_mistake_is_shown_without_control_characters():
    rules = parse_rules("pneumothorax>=0.7:stat, pneumothorax >= 0.70:STAT")
    assert rules == (Rule(None, "pneumothorax", 0.7, "stat"),)
    raised = Triage.for_model(rules, "cxr10", ["pneumothorax"]).evaluate({"pneumothorax": 0.9}, demo=True).raised
    assert len(raised) == 1
    with pytest.raises(PriorityRulesError) as caught:
        parse_rules("pneumothorax>=0.7\x1b[2J:stat\r")
    assert caught.value.sentences[0].isprintable()


def test_several_mistakes_give_one_sentence_each_and_stop_start(tmp_path, demo_bundle):
    with pytest.raises(SettingsError) as caught:
        make_env(tmp_path, demo_bundle.path, CHEXNET_PRIORITY_RULES="mass>=2:stat,mass>=0.5:soon,mass=0.5:stat")
    parts = sentences(str(caught.value))
    assert len(parts) == 3 and all(p.startswith("CHEXNET_PRIORITY_RULES rule '") for p in parts)


def test_unknown_codes_and_models_once_loaded():
    rules = parse_rules("emphysema>=0.5:stat,cxr10:emphysema>=0.5:stat,cxr14:mass>=0.5:stat,nodule>=0.1:urgent")
    problems = unknown(rules, CODES)
    assert problems == [
        "CHEXNET_PRIORITY_RULES rule 'cxr10:emphysema>=0.5:stat' names emphysema, which is not a label code "
        "of model cxr10.",
        "CHEXNET_PRIORITY_RULES rule 'cxr14:mass>=0.5:stat' names model cxr14, which is not loaded "
        "(loaded: cxr10, cxr25).",
        "CHEXNET_PRIORITY_RULES rule 'nodule>=0.1:urgent' names nodule, which is not a label code of any loaded "
        "model (cxr10, cxr25).",
    ]


# --- evaluation ---------------------------------------------------------------------------------------
def test_highest_level_wins_and_every_rule_that_met_is_listed():
    rules = parse_rules(
        "pneumothorax>=0.5:urgent,pneumothorax>=0.8:stat,cxr25:emphysema>=0.1:stat,atelectasis>=0.3:urgent"
    )
    cxr10 = Triage.for_model(rules, "cxr10", CODES["cxr10"])
    assert [r.text for r in cxr10.rules] == [
        "pneumothorax>=0.5:urgent",
        "pneumothorax>=0.8:stat",
        "atelectasis>=0.3:urgent",
    ]

    p = cxr10.evaluate({"atelectasis": 0.4, "pneumothorax": 0.6, "pleural_effusion": 0.9}, demo=False)
    assert p.level == "urgent" and p.rules and not p.demo
    assert [(r.code, r.rule.level) for r in p.raised] == [("pneumothorax", "urgent"), ("atelectasis", "urgent")]

    p = cxr10.evaluate({"atelectasis": 0.1, "pneumothorax": 0.8, "pleural_effusion": 0.9}, demo=True)
    assert p.level == "stat" and p.demo
    assert p.as_dict()["findings"][0] == {
        "code": "pneumothorax",
        "probability": 0.8,
        "threshold": 0.8,
        "level": "stat",
        "rule": "pneumothorax>=0.8:stat",
    }

    p = cxr10.evaluate({"atelectasis": 0.29, "pneumothorax": 0.49, "pleural_effusion": 0.9}, demo=False)
    assert p.as_dict() == {"level": "routine", "rules": True, "demo": False, "findings": []}


def test_without_rules_for_the_model_it_is_routine_with_rules_false():
    rules = parse_rules("cxr25:emphysema>=0.1:stat")
    assert Triage.for_model(rules, "cxr10", CODES["cxr10"]).evaluate({"pneumothorax": 1.0}, demo=True).as_dict() == {
        "level": "routine",
        "rules": False,
        "demo": True,
        "findings": [],
    }


# --- the service: REST JSON, audit row, metric, SR ---------------------------------------------------
@pytest.fixture(scope="module")
def triage_env(tmp_path_factory, demo_bundle):
    return make_env(tmp_path_factory.mktemp("triage"), demo_bundle.path, CHEXNET_PRIORITY_RULES=RULES)


@pytest.fixture(scope="module")
def client(triage_env):
    return ready_app(triage_env).test_client()


def test_rest_json_audit_row_and_metric(client, triage_env, nih_sample):
    response = predict(
        client, triage_env, nih_sample[0].read_bytes(), headers={**triage_env.auth(), "X-Request-ID": "triage-1"}
    )
    body = conforms(response, "/api/v1/predict", "post")
    probability = {f["code"]: f["probability"] for f in body["findings"]}
    assert body["priority"] == {
        "level": "stat",
        "rules": True,
        "demo": True,
        "findings": [
            {
                "code": "pneumothorax",
                "probability": probability["pneumothorax"],
                "threshold": 0.0,
                "level": "stat",
                "rule": "pneumothorax>=0:stat",
            },
            {
                "code": "pleural_effusion",
                "probability": probability["pleural_effusion"],
                "threshold": 0.0,
                "level": "urgent",
                "rule": "cxr10:pleural_effusion>=0:urgent",
            },
        ],
    }
    records = [json.loads(line) for line in (triage_env.root / "audit.jsonl").read_text().splitlines()]
    (record,) = [r for r in records if r["request_id"] == "triage-1"]
    assert record["priority"] == body["priority"]

    def counted() -> float:
        text = client.get("/metrics").get_data(as_text=True)
        line = next(
            x for x in text.splitlines() if x.startswith('chexnet_priority_total{model="cxr10",priority="stat"}')
        )
        return float(line.split()[-1])

    before = counted()
    assert predict(client, triage_env, nih_sample[1].read_bytes()).status_code == 200
    assert counted() == before + 1


def test_sr_carries_the_priority_as_a_coded_finding(client, triage_env, dicom_dir, tmp_path):
    response = predict(
        client,
        triage_env,
        (dicom_dir / "RG1_J2KR.dcm").read_bytes(),
        headers={**triage_env.auth(), "Accept": DICOM_ACCEPT},
    )
    assert response.status_code == 200
    boundary = response.headers["Content-Type"].split("boundary=")[1]
    first = response.data.split(f"--{boundary}".encode())[1].split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]
    sr = pydicom.dcmread(io.BytesIO(first))
    assert dciodvfy_errors(sr, tmp_path) == []
    (container,) = [
        i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == QUALITATIVE_EVALUATIONS.value
    ]
    (item,) = container.ContentSequence
    assert item.ConceptNameCodeSequence[0].CodeValue == PRIORITY.value and item.RelationshipType == "CONTAINS"
    assert (item.ConceptCodeSequence[0].CodeValue, item.ConceptCodeSequence[0].CodingSchemeDesignator) == (
        "stat",
        SCHEME,
    )
    notes = [c.TextValue for c in item.ContentSequence]
    assert notes[0].startswith("raised by pneumothorax>=0:stat: pneumothorax probability ")
    assert notes[1].startswith("raised by cxr10:pleural_effusion>=0:urgent")
    assert "DEMO - NOT FOR DIAGNOSIS" in notes[-1]


def test_a_rule_naming_an_unknown_code_keeps_the_service_not_ready(tmp_path, demo_bundle, nih_sample):
    env = make_env(tmp_path, demo_bundle.path, CHEXNET_PRIORITY_RULES="emphysema>=0.5:stat,cxr10:mass>=0.5:stat")
    client = ready_app(env).test_client()
    ready = client.get("/api/v1/ready")
    assert ready.status_code == 503
    assert ready.get_json()["reasons"] == [
        "CHEXNET_PRIORITY_RULES rule 'emphysema>=0.5:stat' names emphysema, which is not a label code of any "
        "loaded model (cxr10)."
    ]
    body = assert_error(predict(client, env, nih_sample[0].read_bytes()), 503, "not_ready")
    assert "emphysema" in body["error"]["message"]


def test_without_rules_the_json_says_routine_and_rules_false(app, env, nih_sample):
    body = predict(app.test_client(), env, nih_sample[0].read_bytes()).get_json()
    assert body["priority"] == {"level": "routine", "rules": False, "demo": True, "findings": []}


# --- the CLI ------------------------------------------------------------------------------------------
def test_cli_predict_gives_the_priority(demo_bundle, nih_sample, capsys):
    args = ["predict", "--bundle", str(demo_bundle.path), "--engine", "onnxruntime", "--device", "cpu"]
    assert main([*args, "--priority-rules", "cxr10:pneumothorax>=0:urgent", str(nih_sample[0])]) == 0
    line = json.loads(capsys.readouterr().out.splitlines()[0])
    assert line["priority"]["level"] == "urgent" and line["priority"]["findings"][0]["code"] == "pneumothorax"
    assert main([*args, "--priority-rules", "cxr10:emphysema>=0.5:stat", str(nih_sample[0])]) == 2
    assert "--priority-rules rule 'cxr10:emphysema>=0.5:stat' names emphysema" in capsys.readouterr().err
    # rules for other bundles (one CHEXNET_PRIORITY_RULES serves the site's several) are noted, not refused
    assert main([*args, "--priority-rules", "emphysema>=0.5:stat,cxr25:mass>=0.1:urgent", str(nih_sample[0])]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["priority"] == {"level": "routine", "rules": False, "demo": True, "findings": []}
    assert "rule 'emphysema>=0.5:stat' does not apply to bundle cxr10" in captured.err
    assert main([*args, "--priority-rules", "pneumothorax>=2:stat", str(nih_sample[0])]) == 2
    assert "probability 2, outside 0 to 1" in capsys.readouterr().err


# --- the DICOM node's send order ----------------------------------------------------------------------
def test_outgoing_lists_stat_then_urgent_then_routine_each_oldest_first(tmp_path):
    spool = Spool(tmp_path / "spool")
    order = ["routine", "stat", "urgent", "routine", "stat"]
    for number, priority in enumerate(order):
        source = tmp_path / "spool" / "incoming" / f"{number:020d}-source{number}.dcm"
        source.write_bytes(b"x")
        spool.stage_results(source, [b"sr", b"sc"], priority)
        assert not source.exists()
    legacy = tmp_path / "spool" / "outgoing" / f"{2:020d}-legacy-000.dcm"  # written before priorities: routine
    legacy.write_bytes(b"sr")
    names = [p.name for p in spool.files("outgoing")]
    assert [n.split("-source")[1] if "-source" in n else "legacy" for n in names] == [
        "1-000.dcm", "1-001.dcm", "4-000.dcm", "4-001.dcm",  # stat, oldest first
        "2-000.dcm", "2-001.dcm",  # urgent
        "0-000.dcm", "0-001.dcm", "legacy", "3-000.dcm", "3-001.dcm",  # routine, by the time received
    ]  # fmt: skip
    with pytest.raises(ValueError):
        spool.stage_results(tmp_path / "x.dcm", [b"sr"], "critical")


def _probabilities(onnx_predictor, path) -> dict:
    return {f.code: f.probability for f in onnx_predictor.predict(path.read_bytes).findings}


def test_node_sends_stat_results_first(tmp_path, demo_bundle, dicom_dir, onnx_predictor):
    """Two studies wait while the destination is down: the routine one received first, the stat one second.
    When the destination comes up, the stat study's results are stored first."""
    first, second = (dicom_dir / name for name in CHEST)
    p1, p2 = _probabilities(onnx_predictor, first), _probabilities(onnx_predictor, second)
    code = max((c for c in p1 if p2[c] > p1[c]), key=lambda c: p2[c] - p1[c], default=None)
    assert code is not None, "the two sample images give the same probabilities"
    threshold = round((p1[code] + p2[code]) / 2, 6)
    env = make_env(tmp_path, demo_bundle.path)
    destination = Destination(free_port())
    rules = f"{code}>={threshold}:stat"
    # secondary captures only, no STOW-RS port: the order is the subject here
    node = Node(
        env,
        tmp_path,
        destination.port,
        CHEXNET_PRIORITY_RULES=rules,
        CHEXNET_DICOM_MAPS="sc",
        CHEXNET_DICOMWEB_PORT="0",
    )
    try:
        node.start()
        for path in (first, second):
            sent = storescu(node.port, "MODALITY", "CHEXNET", path)
            assert sent.returncode == 0, sent.stderr
            wait_until(lambda: not node.files("incoming"), 120, "the node to predict the instance")
        waiting = [p.name.split("-")[0] for p in sorted((node.spool / "outgoing").glob("*.dcm"))]
        assert sorted(set(waiting)) == ["routine", "stat"]
        destination.start()
        wait_until(lambda: not node.files("outgoing"), 120, "the results to be sent")
        studies = [str(ds.StudyInstanceUID) for ds in destination.received]
        stat_study = str(pydicom.dcmread(second, stop_before_pixels=True).StudyInstanceUID)
        routine_study = str(pydicom.dcmread(first, stop_before_pixels=True).StudyInstanceUID)
        assert stat_study != routine_study
        assert studies.index(stat_study) < studies.index(routine_study)
        assert max(i for i, s in enumerate(studies) if s == stat_study) < studies.index(routine_study)
    finally:
        node.stop()
        destination.stop()
