"""Simulations and recognition: likelihood scoring, scenarios, the slot judge, situations, debates.

Mechanics run on a tiny random Llama with random experts (the `tiny_base_dir` model plus a saved expert
checkpoint); one short command-line run of each command uses the embedded model with the shipped experts.
"""
from __future__ import annotations

import json
import threading

import pytest
import torch
import torch.nn.functional as F

from app.tiny_model import randomize_experts
from hirpf.checkpoint import save_experts
from hirpf.dialogues import IGNORE, Dialogue, tokenize
from hirpf.engine import Engine, Sampling
from hirpf.eval.debate import DebateSpec, run_debates, schedule, stream_debate
from hirpf.eval.recognize import Trial, candidates_for, recognize, score_trials
from hirpf.eval.situations import Episode, LocalOther, RemoteOther, record, score, simulate, summarize
from hirpf.eval.slot_judge import JudgeUnavailable, judge_dialogues, slot_accuracy, slot_judge_messages
from hirpf.experts import ExpertConfig
from hirpf.identities import ALL_IDENTITIES, IdentitySet
from hirpf.inject import add_experts, expert_layers
from hirpf.labels import SLOTS, slots_from_identities
from hirpf.llm_client import ChatClient
from hirpf.paths import his_file
from hirpf.prompts import Conditioning, expert_identities
from hirpf.routing import current_routing, use_identities
from hirpf.scenarios import DEFAULT_SCENARIOS, ScenarioError, load_scenarios, select

from openai_server import OpenAIServer, Reply

S = IdentitySet.parse
GREEDY = Sampling(max_new_tokens=6, do_sample=False)
DIALOGUES = [
    Dialogue(({"role": "user", "content": "How was your week?"},
              {"role": "assistant", "content": "Busy: three night shifts and a long ward round."},
              {"role": "user", "content": "Do you still paint?"},
              {"role": "assistant", "content": "Only on Sundays, and badly."}), S("Doctor,AGR_high"), "mem", 0),
    Dialogue(({"role": "user", "content": "Party tonight?"},
              {"role": "assistant", "content": "I would rather stay in with a book."}), S("EXT_low"), "mem", 1),
    Dialogue(({"role": "user", "content": "Is the release ready?"},
              {"role": "assistant", "content": "Almost; the last tests run tonight and I check them at six."}),
             S("CON_high,NEU_low,Programmer"), "mem", 2),
]


# --- fixtures ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_experts_dir(tiny_base_dir, tmp_path_factory):
    """Random experts (layered: both groups in every layer) for the tiny base, saved as a checkpoint."""
    engine = Engine.load(str(tiny_base_dir), lora_weights=None, load_in_8bit=False, dtype="float32")
    add_experts(engine.model, ExpertConfig(rank=2, layout="layered"))
    randomize_experts(engine.model, scale=0.5)
    return save_experts(engine.model, tmp_path_factory.mktemp("tiny-experts"))


@pytest.fixture(scope="module")
def tiny_engine(tiny_base_dir, tiny_experts_dir):
    return Engine.load(str(tiny_base_dir), lora_weights=tiny_experts_dir, load_in_8bit=False, dtype="float32")


class RoutingLog:
    """Records the identity rows every expert-layer call of the model actually ran with."""

    def __init__(self, model):
        self.calls: list[list[IdentitySet]] = []
        layer = next(iter(expert_layers(model).values()))
        self._handle = layer.register_forward_pre_hook(self._record)

    def _record(self, module, inputs):
        routing = current_routing()
        rows = [] if routing is None else [
            IdentitySet(tuple(n for n, on in zip(ALL_IDENTITIES, active.tolist()) if on)) for active in routing.chosen]
        self.calls.append(rows)

    def close(self):
        self._handle.remove()


# --- recognition by likelihood -------------------------------------------------------------------------
def direct_log_likelihood(model, tokenizer, dialogue: Dialogue, candidate: IdentitySet, mode: Conditioning) -> float:
    """One dialogue, one candidate, the whole model, no batching, no truncation: the reference value."""
    item = tokenize(Dialogue(dialogue.turns, candidate), tokenizer, mode)
    with torch.no_grad(), use_identities([expert_identities(candidate, mode)]):
        logits = model(input_ids=item["input_ids"][None]).logits[0, :-1]
    labels = item["labels"][1:]
    keep = labels != IGNORE
    return F.log_softmax(logits[keep].float(), dim=-1).gather(-1, labels[keep][:, None]).sum().item()


def test_neighbours_include_removed_poles_and_profession_edits():
    truth = S("AGR_high,Doctor")
    assert candidates_for(truth)[0] == truth
    assert set(candidates_for(truth)[1:]) == {S("AGR_low,Doctor"), S("Doctor"), S("AGR_high,Artist"),
                                              S("AGR_high,Programmer"), S("AGR_high")}
    assert set(candidates_for(truth, remove_poles=False)[1:]) == {S("AGR_low,Doctor"), S("AGR_high,Artist"),
                                                                  S("AGR_high,Programmer"), S("AGR_high")}


@pytest.mark.parametrize("batch_size,batch_tokens", [(5, 4096), (16, 200)])  # row-bound, token-bound batches
def test_batched_scores_equal_a_per_dialogue_computation(tiny_engine, batch_size, batch_tokens):
    model, tokenizer = tiny_engine.model, tiny_engine.tokenizer
    trials = [Trial(d, candidates_for(d.identities), mode) for d in DIALOGUES for mode in Conditioning]
    log = RoutingLog(model)
    try:
        batched = score_trials(model, tokenizer, trials, max_length=None, batch_size=batch_size,
                               batch_tokens=batch_tokens)
    finally:
        log.close()
    for trial, scores in zip(trials, batched):
        expected = [direct_log_likelihood(model, tokenizer, trial.dialogue, c, trial.conditioning)
                    for c in trial.candidates]
        assert scores == pytest.approx(expected, rel=1e-5, abs=1e-3)
    # Each batch really mixed identity sets row by row, and the experts-only rows (identical tokens for
    # every candidate) still scored differently: the routing, not the prompt, made the difference.
    assert any(len(set(rows)) > 2 for rows in log.calls)
    experts_only = [s for t, s in zip(trials, batched) if t.conditioning is Conditioning.EXPERTS]
    assert all(len(set(s)) == len(s) for s in experts_only)


def test_truncation_scores_every_candidate_on_the_same_turns(tiny_engine):
    model, tokenizer = tiny_engine.model, tiny_engine.tokenizer
    dialogue = Dialogue(DIALOGUES[0].turns + ({"role": "user", "content": "And next week?"},
                                              {"role": "assistant", "content": "More of the same, I fear."}),
                        S("Doctor,AGR_high,OPE_low"))
    candidates = candidates_for(dialogue.identities)
    mode = Conditioning.EXPERTS_AND_PROMPT

    def length(cand, n_turns):
        return len(tokenize(Dialogue(dialogue.turns[:n_turns], cand), tokenizer, mode)["input_ids"])

    # A limit that keeps two assistant turns under the shortest system message but one under the longest.
    longest = max(candidates, key=lambda c: length(c, 4))
    shortest = min(candidates, key=lambda c: length(c, 4))
    assert length(longest, 4) > length(shortest, 4)
    max_length = length(shortest, 4)
    kept = max(n for n in (2, 4, 6) if all(length(c, n) <= max_length for c in candidates))
    assert kept == 2
    scores = score_trials(model, tokenizer, [Trial(dialogue, candidates, mode)], max_length=max_length)[0]
    cut = Dialogue(dialogue.turns[:kept], dialogue.identities)
    assert scores == pytest.approx([direct_log_likelihood(model, tokenizer, cut, c, mode) for c in candidates],
                                   rel=1e-5, abs=1e-3)


def test_recognize_reports_per_mode_identity_and_count(tiny_engine):
    modes = [Conditioning.EXPERTS_AND_PROMPT, Conditioning.PROMPT]
    empty = Dialogue(DIALOGUES[1].turns, IdentitySet())
    result = recognize(tiny_engine.model, tiny_engine.tokenizer, DIALOGUES + [empty], modes, batch_size=4)
    assert result["dialogues"] == 3 and result["left_out_empty_sets"] == 1
    for mode in ("experts+prompt", "prompt"):
        hits = [d[mode]["hit"] for d in result["details"]]
        assert hits == [d[mode]["scores"][0] > max(d[mode]["scores"][1:]) for d in result["details"]]
        assert result["accuracy_by_mode"][mode] == pytest.approx(sum(hits) / 3)
        assert set(result["accuracy_by_count"][mode]) == {"1", "2", "3"}
        assert result["accuracy_by_identity"][mode]["Doctor"] == {"accuracy": float(hits[0]), "dialogues": 1}
        assert set(result["accuracy_by_identity"][mode]) == {"Doctor", "AGR_high", "EXT_low", "CON_high", "NEU_low",
                                                             "Programmer"}


# --- scenarios --------------------------------------------------------------------------------------
def test_our_bank_has_one_scenario_per_trait_and_profession():
    scenarios = load_scenarios()
    assert sorted(s.target for s in scenarios) == sorted(["AGR", "CON", "EXT", "NEU", "OPE", "Doctor", "Artist",
                                                          "Programmer"])
    assert all(s.setting and s.other_brief and s.look_for and s.other_character for s in scenarios)
    assert scenarios[0].other_brief in scenarios[0].other_system_message()


def test_the_his_scenario_file_loads_unchanged():
    path = his_file("open_situational_test.json")
    if not path.is_file():
        pytest.skip("the HIS release is not beside the checkout")
    raw = json.loads(path.read_text())
    scenarios = load_scenarios(path)
    assert len(scenarios) == len(raw)
    by_target = {s.target: s for s in scenarios}
    assert by_target["NEU"].setting == raw["Neuroticism"]["Scenario"]
    assert by_target["OPE"].other_brief == raw["Openness"]["NPC_prompt"]
    assert by_target["Doctor"].look_for == raw["Doctor"]["Interaction"]
    # Nothing of theirs is in our bank.
    ours = DEFAULT_SCENARIOS.read_text()
    assert not any(s.setting in ours or s.other_brief in ours for s in scenarios)


@pytest.mark.parametrize("content,message", [
    ({"scenarios": [{"id": "x", "target": "EXT", "setting": "s", "other_character": "o", "other_brief": "b"}]},
     "'look_for' missing"),
    ({"scenarios": [{"id": "x", "target": "Chef", "setting": "s", "other_character": "o", "other_brief": "b",
                     "look_for": "l"}]}, "unknown scenario target 'Chef'"),
    ({"Extraversion": {"Scenario": "s", "NPC_Setting": "o", "NPC_prompt": "p"}}, "'Interaction' missing"),
    ([1, 2], "expected {'scenarios'"),
])
def test_bad_scenario_files_name_the_problem(tmp_path, content, message):
    path = tmp_path / "scenarios.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ScenarioError, match=message):
        load_scenarios(path)


def test_select_scenarios_by_id_or_target():
    scenarios = load_scenarios()
    chosen = select(scenarios, "Extraversion,doctor-worrying-headaches")
    assert [s.target for s in chosen] == ["EXT", "Doctor"]
    with pytest.raises(ScenarioError, match="no scenario 'nope'"):
        select(scenarios, "nope")


# --- the slot judge -----------------------------------------------------------------------------------
GOOD_JUDGMENT = {"AGR": "high", "CON": "none", "EXT": "low", "NEU": "none", "OPE": "none", "Profession": "Doctor"}
DIALOG = [{"role": "system", "content": "You are a doctor with high agreeableness (AGR_high)."},
          {"role": "user", "content": "(Situation: a bakery queue.)\n\nHi, I have had headaches all week."},
          {"role": "assistant", "content": "I am sorry to hear that. Any blurred vision? That needs a check."}]


def client_for(server, **kw):
    return ChatClient(server.base_url, "judge-model", api_key="", timeout=kw.pop("timeout", 2.0), max_retries=2, **kw)


def test_the_judge_reads_the_anonymized_dialogue_and_returns_six_slots(openai_server):
    openai_server.responder = lambda request: json.dumps(GOOD_JUDGMENT)
    [judgment] = judge_dialogues(client_for(openai_server), [DIALOG])
    assert judgment.ok and judgment.slots == GOOD_JUDGMENT and list(judgment.slots) == list(SLOTS)
    messages = openai_server.chat_requests[0]["messages"]
    assert messages == slot_judge_messages(DIALOG)
    text = messages[-1]["content"]
    assert "X: (Situation" in text and "Y: I am sorry" in text and "Describe speaker Y" in text
    assert "AGR_high" not in text and "You are a doctor" not in text  # system turn gone, codes redacted


def test_the_judge_accepts_his_spellings():
    from hirpf.eval.slot_judge import parse_slots

    slots = parse_slots({"agr": "High", "CON": None, "EXT": "low", "EMS": "high", "OPE": "", "Profession": "none"})
    assert slots["NEU"] == "low"


def test_malformed_judgments_are_retried_then_counted_failed(openai_server):
    bad_shape = json.dumps({**GOOD_JUDGMENT, "Profession": "Chef"})
    openai_server.script(Reply(content="The speaker seems kind."), Reply(content=bad_shape))
    openai_server.responder = lambda request: json.dumps(GOOD_JUDGMENT)
    [retried] = judge_dialogues(client_for(openai_server), [DIALOG], attempts=3)
    assert retried.ok and len(openai_server.chat_requests) == 3

    openai_server.script(*[Reply(content="not json")] * 3)
    [failed] = judge_dialogues(client_for(openai_server), [DIALOG], attempts=3)
    assert not failed.ok and failed.slots is None and failed.error.startswith("malformed")
    assert failed.raw_replies == ["not json"] * 3


def test_rate_limits_and_timeouts_are_retried_and_refusals_stop_the_run(openai_server):
    openai_server.responder = lambda request: json.dumps(GOOD_JUDGMENT)
    openai_server.script(Reply.rate_limited(0), Reply.slow(1.0))
    [judgment] = judge_dialogues(client_for(openai_server, timeout=0.3), [DIALOG])
    assert judgment.ok and len(openai_server.requests) == 3

    openai_server.script(*[Reply.error(503)] * 3)  # retries exhausted: this dialogue fails, the run goes on
    [gave_up] = judge_dialogues(client_for(openai_server), [DIALOG])
    assert not gave_up.ok and gave_up.error.startswith("endpoint")

    with OpenAIServer(api_key="right") as locked:
        with pytest.raises(JudgeUnavailable, match="401"):
            judge_dialogues(ChatClient(locked.base_url, "m", api_key="wrong", max_retries=0), [DIALOG])


def test_slot_accuracy_counts_per_slot_exact_match_and_recall():
    target = {"AGR": "high", "CON": "none", "EXT": "none", "NEU": "none", "OPE": "none", "Profession": "Doctor"}
    wrong_job = {**target, "Profession": "Artist"}
    result = slot_accuracy([(target, target), (target, wrong_job)])
    assert result["accuracy_by_slot"]["Profession"] == 0.5 and result["accuracy_by_slot"]["AGR"] == 1.0
    assert result["exact_match"] == 0.5
    assert result["accuracy"] == pytest.approx(11 / 12)
    assert result["identity_recall"] == pytest.approx(3 / 4)



def test_slot_accuracy_reports_the_always_none_baseline_and_leads_with_recall():
    """Issue 12 item 16: most target slots are none, so a judge that answers none everywhere scores high on
    the six-slot accuracy; that baseline is reported beside it, and identity recall comes first."""
    targets = [slots_from_identities(S(names)) for names in ("AGR_high", "EXT_low,Doctor", "CON_high,NEU_low,Artist")]
    always_none = {slot: "none" for slot in SLOTS}
    result = slot_accuracy([(target, always_none) for target in targets])
    assert result["accuracy_always_none"] == pytest.approx((5 + 4 + 3) / 18)
    assert result["accuracy"] == pytest.approx(result["accuracy_always_none"])  # that judge scores exactly it
    assert result["identity_recall"] == 0.0
    assert list(result)[0] == "identity_recall"
    perfect = slot_accuracy([(target, target) for target in targets])
    assert perfect["accuracy"] == 1.0 and perfect["accuracy_always_none"] == pytest.approx(12 / 18)
    document = {"episodes": 3, "identity_sets": 3, "scenarios": ["a"], "judged": 3, "judge_failed": 0,
                "files": {"dialogues": "d.jsonl"}, **result}
    lines = summarize(document).splitlines()
    assert lines[1].startswith("identity recall 0.000") and "always none" in lines[1]
    assert "0.667" in lines[1]

# --- situations ---------------------------------------------------------------------------------------
def test_situations_route_each_identity_set_to_its_own_experts(tiny_engine):
    sets = [S("AGR_high"), S("EXT_low,Doctor"), S("CON_high,NEU_low,OPE_high,Artist")]
    scenarios = load_scenarios()[:2]
    episodes = [Episode(s, sc) for s in sets for sc in scenarios]
    log = RoutingLog(tiny_engine.model)
    try:
        simulate(tiny_engine, episodes, LocalOther(tiny_engine, GREEDY, batch_size=4), turns=2,
                 conditioning=Conditioning.EXPERTS_AND_PROMPT, sampling=GREEDY, batch_size=4)
    finally:
        log.close()
    for episode in episodes:
        assert [t["role"] for t in episode.turns] == ["user", "assistant", "user", "assistant"]
        assert episode.agent_view()[0]["content"].startswith(f"(Situation: {episode.scenario.setting})")
    # One opening per scenario, the same for every identity set.
    assert len({(e.scenario.id, e.turns[0]["content"]) for e in episodes}) == len(scenarios)
    batches = {tuple(rows) for rows in log.calls}
    agent_rows = [e.identities for e in episodes]
    assert tuple(agent_rows[:4]) in batches and tuple(agent_rows[4:]) in batches  # agent steps: own sets per row
    assert all(set(rows) == {IdentitySet()} for rows in batches if IdentitySet() in rows)  # other: no experts


def test_batched_situations_equal_one_by_one(tiny_engine):
    sets = [S("AGR_high"), S("EXT_low,Doctor"), S("OPE_low,Programmer")]
    scenario = load_scenarios()[2]
    other = LocalOther(tiny_engine, GREEDY)
    batched = simulate(tiny_engine, [Episode(s, scenario) for s in sets], other, turns=2, sampling=GREEDY)
    alone = [simulate(tiny_engine, [Episode(s, scenario)], other, turns=2, sampling=GREEDY)[0] for s in sets]
    assert [e.turns for e in batched] == [e.turns for e in alone]


def test_a_remote_other_character_sees_its_brief_and_the_reversed_dialogue(tiny_engine, openai_server):
    openai_server.responder = lambda request: "Well, what do you say to that?"
    scenario = load_scenarios()[0]
    client = client_for(openai_server)
    [episode] = simulate(tiny_engine, [Episode(S("AGR_low"), scenario)], RemoteOther(client, GREEDY), turns=2,
                         sampling=GREEDY)
    assert [t["content"] for t in episode.turns if t["role"] == "user"] == ["Well, what do you say to that?"] * 2
    last = openai_server.chat_requests[-1]["messages"]
    assert last[0] == {"role": "system", "content": scenario.other_system_message()}
    assert [m["role"] for m in last[1:]] == ["user", "assistant", "user"]
    assert last[-1]["content"] == episode.turns[1]["content"]  # the agent's line arrives as the user's


def test_situation_records_and_scores():
    scenario = load_scenarios()[0]
    episode = Episode(S("AGR_high,Doctor"), scenario, [{"role": "user", "content": "Hi."},
                                                       {"role": "assistant", "content": "Hello!"}])
    from hirpf.eval.slot_judge import SlotJudgment

    good = record(episode, "hirpf/test", SlotJudgment(dict(GOOD_JUDGMENT)), "judge-model")
    failed = record(episode, "hirpf/test", SlotJudgment(None, "malformed: not JSON"), "judge-model")
    assert good["source"] == "simulator" and good["system"] == "hirpf/test"
    assert good["active_adapters"] == ["AGR_high", "Doctor"]
    assert good["dialog"][0]["content"].endswith("Hi.")
    assert good["judge"] == {"name": "judge-model", "slots": GOOD_JUDGMENT}
    assert "judge" not in failed and failed["judge_error"] == "malformed: not JSON"
    result = score([good, failed])
    assert result["judged"] == 1 and result["judge_failed"] == 1
    assert result["judge_failures_by_reason"] == {"malformed": 1}
    assert result["accuracy_by_slot"]["EXT"] == 0.0 and result["accuracy_by_slot"]["Profession"] == 1.0
    assert result["accuracy_by_count"]["2"]["dialogues"] == 1


# --- debates ------------------------------------------------------------------------------------------
def test_each_debater_sees_its_own_turns_as_the_assistant():
    from hirpf.eval.debate import Debate, Turn

    debate = Debate(DebateSpec("Cats beat dogs", S("AGR_high"), S("Doctor"), rounds=1))
    first = debate.view("A")
    assert len(first) == 1 and "Cats beat dogs" in first[0]["content"]
    assert "for the motion" in first[0]["content"].lower()
    debate.turns.append(Turn("A", "opening", 0, "Cats are clean."))
    b_view = debate.view("B")
    assert [m["role"] for m in b_view] == ["user"] and "against the motion" in b_view[0]["content"].lower()
    assert "Cats are clean." in b_view[0]["content"]
    debate.turns += [Turn("B", "opening", 0, "Dogs are loyal."), Turn("A", "rebuttal", 1, "Loyalty is overrated.")]
    b_view = debate.view("B")
    assert [m["role"] for m in b_view] == ["user", "assistant", "user"]
    assert b_view[1]["content"] == "Dogs are loyal." and "Loyalty is overrated." in b_view[2]["content"]
    assert "Rebut" in b_view[2]["content"]
    # every cue restates the motion and the side, after the opponent's words (tests/test_debate_stance.py)
    last_cue = b_view[2]["content"]
    assert "Cats beat dogs" in last_cue and last_cue.lower().rindex("against the motion") > \
        last_cue.index("Loyalty is overrated.")
    assert [s[:2] for s in schedule(1)] == [("A", "opening"), ("B", "opening"), ("A", "rebuttal"),
                                            ("B", "rebuttal"), ("A", "closing"), ("B", "closing")]


def test_batched_debates_equal_one_by_one_and_streaming(tiny_engine):
    specs = [DebateSpec("Cats beat dogs", S("AGR_high"), S("Doctor"), rounds=1),
             DebateSpec("Tea beats coffee", S("EXT_low,OPE_high"), IdentitySet(), rounds=2),
             DebateSpec("Cats beat dogs", S("AGR_low"), S("Artist,NEU_high"), rounds=1)]
    log = RoutingLog(tiny_engine.model)
    try:
        batched = run_debates(tiny_engine, specs, sampling=GREEDY)
    finally:
        log.close()
    assert (S("AGR_high"), S("EXT_low,OPE_high"), S("AGR_low")) in {tuple(rows) for rows in log.calls}
    alone = [run_debates(tiny_engine, [spec], sampling=GREEDY)[0] for spec in specs]
    assert [d.turns for d in batched] == [d.turns for d in alone]
    assert [len(d.turns) for d in batched] == [6, 8, 6]
    updates = list(stream_debate(tiny_engine, specs[0], sampling=GREEDY))
    assert updates[-1].turns == alone[0].turns and updates[-1].finished
    assert len(updates) > len(alone[0].turns)  # pieces of each statement, not only whole turns


def test_a_stopped_stream_ends_early(tiny_engine):
    stop = threading.Event()
    spec = DebateSpec("Cats beat dogs", S("AGR_high"), S("Doctor"), rounds=3)
    updates = []
    for debate in stream_debate(tiny_engine, spec, sampling=GREEDY, stop_event=stop):
        updates.append(debate)
        if len(debate.turns) == 2:
            stop.set()
    assert not updates[-1].finished and len(updates[-1].turns) <= 3


def test_debate_markdown_and_json():
    from hirpf.eval.debate import Debate, Turn

    debate = Debate(DebateSpec("Cats beat dogs", S("AGR_high"), S("Doctor"), 1),
                    [Turn("A", "opening", 0, "Cats are clean."), Turn("B", "rebuttal", 1, "Dogs are loyal.")])
    markdown = debate.to_markdown()
    assert "# Debate: Cats beat dogs" in markdown and "## B: rebuttal 1" in markdown and "Cats are clean." in markdown
    assert debate.to_dict()["b"] == {"identities": ["Doctor"], "describe": "a doctor", "side": "against"}


# --- the commands, end to end on the embedded model with the shipped experts ---------------------------
def run_cli(capsys, *args) -> dict:
    """`python -m hirpf.eval ... --json` run in this process, as test_questionnaire runs it (a subprocess would
    import torch and transformers again, seconds each); its one JSON document."""
    from hirpf.eval.__main__ import main

    code = main([*map(str, args), "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    return json.loads(captured.out)


def test_recognize_command(capsys, tmp_path):
    data = tmp_path / "dialogues.jsonl"
    data.write_text("\n".join(json.dumps({"dialog": list(d.turns), "active_adapters": list(d.identities.names)})
                              for d in DIALOGUES[:2]))
    document = run_cli(capsys, "recognize", "--data", data, "--modes", "experts+prompt,prompt",
                       "--output_dir", tmp_path / "out")
    assert set(document["accuracy_by_mode"]) == {"experts+prompt", "prompt"}
    assert document["dialogues"] == 2 and len(document["details"]) == 2
    assert document["config"]["experts"].endswith("smollm2-135m-experts")
    assert (tmp_path / "out" / "recognize.json").is_file()
    # The same dialogues scored as each candidate's plain-LoRA export (router held at its bias).
    exported = run_cli(capsys, "recognize", "--data", data, "--modes", "experts+prompt", "--as_export", "bias",
                       "--output_dir", tmp_path / "export")
    assert exported["as_export"] == "bias" and document["as_export"] is None
    live = [d["experts+prompt"]["scores"] for d in document["details"]]
    assert [d["experts+prompt"]["scores"] for d in exported["details"]] != live  # the trained routers read the input


def test_situations_command_with_a_local_judge(capsys, tmp_path):
    with OpenAIServer(responder=lambda request: json.dumps(GOOD_JUDGMENT)) as judge:
        judge.script(*[Reply(content="no idea")] * 2)  # the first dialogue's judgments are malformed
        document = run_cli(capsys, "situations", "--identities", "AGR_high,Doctor", "EXT_low", "--scenarios", "EXT",
                           "--turns", "1", "--max_new_tokens", "12", "--judge_base_url", judge.base_url,
                           "--judge_model", "judge", "--judge_attempts", "2", "--judge_workers", "1",
                           "--judge_cache_dir", "none", "--output_dir", tmp_path)
    assert document["episodes"] == 2 and document["judged"] == 1 and document["judge_failed"] == 1
    records = [json.loads(line) for line in (tmp_path / "dialogues.jsonl").read_text().splitlines()]
    assert [r["active_adapters"] for r in records] == [["AGR_high", "Doctor"], ["EXT_low"]]
    assert all(r["source"] == "simulator" and [t["role"] for t in r["dialog"]] == ["user", "assistant"]
               for r in records)
    assert "judge" not in records[0] and records[0]["judge_error"].startswith("malformed")
    assert records[1]["judge"] == {"name": "judge", "slots": GOOD_JUDGMENT}
    expected = slot_accuracy([(records[1]["target"], GOOD_JUDGMENT)])
    assert document["accuracy"] == pytest.approx(expected["accuracy"])
    assert document["exact_match"] == expected["exact_match"]
    # The file goes into the human evaluation as it is: targets and the judge's labels arrive with it.
    from sqlalchemy import select

    from annotation.store import Store
    from annotation.store_io import import_file
    from db import Database
    from db.models import JudgePrediction

    database = Database(f"sqlite:///{tmp_path / 'store.db'}")
    report = import_file(Store(database), tmp_path / "dialogues.jsonl", kind="jsonl")
    assert report.added == 2 and not report.errors
    with database.read() as session:
        [prediction] = session.scalars(select(JudgePrediction)).all()
        assert prediction.judge == "judge" and prediction.slots == GOOD_JUDGMENT


def test_debate_command(capsys, tmp_path):
    document = run_cli(capsys, "debate", "--topic", "Remote work beats the office", "--a", "EXT_high,Artist", "--b",
                       "CON_high,Programmer", "--rounds", "1", "--max_new_tokens", "12", "--greedy",
                       "--output_dir", tmp_path)
    [debate] = document["debates"]
    assert [(t["speaker"], t["stage"]) for t in debate["turns"]] == [
        ("A", "opening"), ("B", "opening"), ("A", "rebuttal"), ("B", "rebuttal"), ("A", "closing"), ("B", "closing")]
    assert all(t["content"] for t in debate["turns"])
    assert (tmp_path / "debate-1.md").read_text().startswith("# Debate: Remote work beats the office")


def test_misses_are_counted_by_what_the_winning_neighbour_did():
    from hirpf.eval.recognize import summarize_details

    def row(true, neighbours, scores):
        return {"identities": true, "neighbours": neighbours, "experts": {"hit": scores[0] > max(scores[1:]),
                                                                          "margin": 0.0, "scores": scores}}

    details = [row("AGR_low,Doctor", ["AGR_high,Doctor", "Doctor", "AGR_low,Artist", "AGR_low"], [-5, -6, -4, -7, -8]),
               row("EXT_high", ["EXT_low", "(none)"], [-3, -4, -2]),
               row("NEU_high,Artist", ["NEU_low,Artist", "Artist", "NEU_high,Doctor"], [-9, -8, -9.5, -10]),
               row("CON_high,Programmer", ["CON_low,Programmer", "Programmer", "CON_high,Doctor"], [-7, -8, -9, -6]),
               row("OPE_low", ["OPE_high", "(none)"], [-1, -2, -3])]
    assert summarize_details(details, ["experts"])["misses_by_winner"]["experts"] == {
        "identity removed": 2, "pole flipped": 1, "profession changed": 1}
