"""The trainer on a tiny random Llama: flags, checkpoints in the core format, resume, two-process DDP."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hirpf.checkpoint import read_config
from training import self_report

from training_runs import train, write_data

ROOT = Path(__file__).resolve().parent.parent


def test_dev_run_writes_expert_checkpoints_and_a_summary(tmp_path, tiny_base_dir):
    data = write_data(tmp_path / "data.json")
    out = tmp_path / "run"
    result = train("--data", data, "--base_model", tiny_base_dir, "--output_dir", out, "--dev", "--rank", 4,
                   "--batch_size", 4, "--micro_batch_size", 2, "--num_epochs", 2, "--save_steps", 2,
                   "--eval_steps", 2, "--logging_steps", 1, "--learning_rate", 1e-2, "--warmup_steps", 0)
    assert "trainable parameters:" in result.stderr
    config, fingerprint = read_config(out)
    assert config.layout == "alternate" and config.rank == 4 and fingerprint["hidden_size"] == 32
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4", "checkpoint-6"]
    assert (out / "checkpoint-2" / "adapter_model.safetensors").is_file()
    assert not list(out.rglob("model.safetensors"))  # never the base weights
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["steps"] == 6 and summary["train_samples"] == 10 and summary["eval_samples"] == 2
    assert summary["tokens_per_s"] > 0 and summary["final_eval_loss"] is not None
    assert summary["final_train_loss"] == [e["loss"] for e in summary["log_history"] if "loss" in e][-1]
    assert any("tokens_per_s" in entry and "loss" in entry for entry in summary["log_history"])
    weights = load_file(str(out / "adapter_model.safetensors"))
    assert any(k.endswith("lora_B") and v.abs().sum() > 0 for k, v in weights.items())  # the experts learned
    chat = subprocess.run([sys.executable, "-m", "hirpf", "chat", "--user_prompt", "hi",
                           "--base_model", str(tiny_base_dir), "--lora_weights", str(out),
                           "--active_adapter_names", "Doctor", "--max_new_tokens", "3"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert chat.returncode == 0 and f"experts: {out}" in chat.stderr, chat.stderr[-2000:]


def test_resume_continues_from_a_checkpoint(tmp_path, tiny_base_dir):
    """Resuming from step 5 of a 10-step run restores the experts, the optimizer, the schedule and the data
    order: it ends with the weights of the run that was never stopped."""
    data = write_data(tmp_path / "data.json")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"

    def common(out):
        return ["--data", data, "--base_model", tiny_base_dir, "--output_dir", out, "--dev", "--rank", 2,
                "--batch_size", 2, "--micro_batch_size", 2, "--save_steps", 5, "--eval_steps", 100,
                "--num_epochs", 2, "--learning_rate", 1e-2, "--warmup_steps", 0]

    train(*common(straight))
    train(*common(resumed), "--resume_from_checkpoint", straight / "checkpoint-5")
    assert json.loads((resumed / "training_summary.json").read_text())["steps"] == 10
    reference = load_file(str(straight / "adapter_model.safetensors"))
    halfway = load_file(str(straight / "checkpoint-5" / "adapter_model.safetensors"))
    after_resume = load_file(str(resumed / "adapter_model.safetensors"))
    assert after_resume.keys() == reference.keys()
    assert any(not torch.equal(halfway[k], reference[k]) for k in reference)  # steps 6-10 changed the experts
    for key, value in reference.items():
        torch.testing.assert_close(after_resume[key], value, rtol=1e-4, atol=1e-6, msg=key)


def test_router_and_mask_switches_take_the_issue_spelling(tmp_path, tiny_base_dir):
    data = write_data(tmp_path / "data.json")
    out = tmp_path / "run"
    train("--data", data, "--base_model", tiny_base_dir, "--output_dir", out, "--dev", "--rank", 2,
          "--batch_size", 2, "--micro_batch_size", 2, "--num_epochs", 1, "--eval_steps", 100,
          "--no_train_router", "--no_hard_mask", "--learning_rate", 1e-2, "--warmup_steps", 0)
    config, _ = read_config(out)
    assert config.hard_mask is False
    weights = load_file(str(out / "adapter_model.safetensors"))
    routers = [v for k, v in weights.items() if "router" in k]
    assert routers and all(v.abs().sum() == 0 for v in routers)  # frozen at zero: uniform mixing
    assert any(v.abs().sum() > 0 for k, v in weights.items() if k.endswith("lora_B"))


def test_a_shared_expert_and_extra_training_data(tmp_path, tiny_base_dir):
    """--shared_expert adds the always-on expert to every layer, and it learns; --extra_data joins the
    training split only, so the held-out split of --data is the same with and without it."""
    data = write_data(tmp_path / "data.json", n=20)
    extra = write_data(tmp_path / "extra.json", n=6)
    runs = {}
    for name, more in (("plain", []), ("extra", ["--extra_data", extra, "--shared_expert"])):
        out = runs[name] = tmp_path / name
        train("--data", data, "--base_model", tiny_base_dir, "--output_dir", out, "--rank", 2, "--batch_size", 2,
              "--micro_batch_size", 2, "--num_epochs", 1, "--eval_steps", 100, "--learning_rate", 1e-2,
              "--warmup_steps", 0, "--eval_fraction", 0.2, *more)
    plain, extra_run = (json.loads((runs[n] / "training_summary.json").read_text()) for n in ("plain", "extra"))
    assert extra_run["train_samples"] == plain["train_samples"] + 6
    assert extra_run["eval_samples"] == plain["eval_samples"] == 4
    assert extra_run["final_eval_loss"] != plain["final_eval_loss"]
    config, _ = read_config(runs["extra"])
    assert config.shared_expert and not read_config(runs["plain"])[0].shared_expert
    weights = load_file(str(runs["extra"] / "adapter_model.safetensors"))
    rank = config.rank
    shared = [v[:, -rank:] for k, v in weights.items() if k.endswith("lora_B")]  # the last expert's columns
    assert shared and all(s.abs().sum() > 0 for s in shared)


def test_bad_records_stop_the_run_or_are_skipped(tmp_path, tiny_base_dir):
    data = write_data(tmp_path / "data.json", n=8)
    records = json.loads(data.read_text())
    records[3]["active_adapters"] = ["CON_high", "CON_low"]
    data.write_text(json.dumps(records))
    command = [sys.executable, str(ROOT / "training" / "train.py"), "--data", str(data), "--base_model",
               str(tiny_base_dir), "--output_dir", str(tmp_path / "x"), "--dev", "--batch_size", "2"]
    failed = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert failed.returncode != 0 and "record 3: identity rules: both poles of CON" in failed.stderr
    result = train(*command[2:], "--on_invalid", "skip", "--num_epochs", 1)
    assert "1 × identity rules: both poles of one trait" in result.stderr


def test_two_processes_train_on_different_shards_and_save_one_model(tmp_path, tiny_base_dir):
    data = write_data(tmp_path / "data.json", n=16)
    out = tmp_path / "ddp"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517"]
    train("--data", data, "--base_model", tiny_base_dir, "--output_dir", out, "--rank", 2, "--batch_size", 4,
          "--micro_batch_size", 2, "--num_epochs", 1, "--eval_fraction", 0.25, "--save_steps", 100,
          "--eval_steps", 100, "--log_samples", "--learning_rate", 1e-2, "--warmup_steps", 0, launcher=torchrun)
    seen = [set(json.loads((out / f"samples_rank{r}.json").read_text())) for r in (0, 1)]
    assert seen[0] and seen[1] and not seen[0] & seen[1]  # each process its own shard
    assert len(seen[0] | seen[1]) == 12  # together: the whole training split
    final = load_file(str(out / "adapter_model.safetensors"))
    assert any(v.abs().sum() > 0 for k, v in final.items() if k.endswith("lora_B"))
    other = load_file(str(out / "rank1" / "adapter_model.safetensors"))  # what the second process holds
    assert final.keys() == other.keys() and all(torch.equal(final[k], other[k]) for k in final)
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 3


def test_an_8bit_base_trains_its_experts(tmp_path, tiny_base_dir):
    """bitsandbytes LLM.int8 works on the CPU; the experts around the frozen 8-bit projections learn."""
    pytest.importorskip("bitsandbytes")
    data = write_data(tmp_path / "data.json", n=8)
    out = tmp_path / "int8"
    train("--data", data, "--base_model", tiny_base_dir, "--output_dir", out, "--dev", "--rank", 2,
          "--batch_size", 2, "--micro_batch_size", 2, "--num_epochs", 1, "--eval_steps", 100,
          "--load_in_8bit", "--learning_rate", 1e-2, "--warmup_steps", 0)
    summary = json.loads((out / "training_summary.json").read_text())
    assert summary["steps"] == 4 and summary["args"]["load_in_8bit"] is True
    weights = load_file(str(out / "adapter_model.safetensors"))
    # layer 0's experts learned: the gradient went back through the 8-bit projections above them
    assert all(v.abs().sum() > 0 for k, v in weights.items()
               if k.startswith("model.layers.0.") and k.endswith("lora_B"))
    assert not any("weight_format" in k or "SCB" in k for k in weights)  # experts only, no 8-bit base state


def test_the_8bit_permission_lasts_only_while_the_trainer_checks(tmp_path, tiny_base_dir):
    """The PEFT flag that lets the Trainer accept the quantized base is gone once it is built (it would
    switch save_pretrained to PEFT's handling), and a quantized base without experts is refused."""
    pytest.importorskip("bitsandbytes")
    from transformers import TrainingArguments

    from hirpf.base_model import load_base_model
    from hirpf.experts import ExpertConfig
    from hirpf.inject import add_experts
    from training.train import ExpertTrainer

    model, _ = load_base_model(str(tiny_base_dir), load_in_8bit=True)
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    with pytest.raises(SystemExit, match="quantized base model trains only through its experts"):
        ExpertTrainer(model=model, args=args)
    add_experts(model, ExpertConfig(rank=2))
    ExpertTrainer(model=model, args=args)
    assert model.is_quantized and not model._hf_peft_config_loaded


def test_several_gpus_in_one_process_are_refused(tmp_path, tiny_base_dir, monkeypatch):
    """nn.DataParallel's replica threads do not inherit the identity rows: refuse it and name torchrun."""
    from transformers import TrainingArguments

    from hirpf.base_model import load_base_model
    from hirpf.experts import ExpertConfig
    from hirpf.inject import add_experts
    from training.train import ExpertTrainer

    model, _ = load_base_model(str(tiny_base_dir), load_in_8bit=False)
    add_experts(model, ExpertConfig(rank=2))
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[])
    ExpertTrainer(model=model, args=args)  # one device: accepted
    monkeypatch.setattr(TrainingArguments, "n_gpu", property(lambda self: 2))
    with pytest.raises(SystemExit, match=r"DataParallel.*torchrun --nproc_per_node 2"):
        ExpertTrainer(model=model, args=args)


def test_evaluation_and_model_card_come_from_the_run(tmp_path, tiny_base_dir):
    """The card's facts (recipe, command, steps, figures) come from the run's summary and its evaluation."""
    data = write_data(tmp_path / "data.json", n=16)
    run = tmp_path / "run"
    train("--data", data, "--base_model", tiny_base_dir, "--output_dir", run, "--rank", 2, "--batch_size", 4,
          "--micro_batch_size", 2, "--num_epochs", 1, "--learning_rate", 1e-2, "--warmup_steps", 0,
          "--gate", "sigmoid", "--eval_fraction", 0.25, "--eval_steps", 2, "--save_steps", 100, "--max_length", 128)
    evaluation = tmp_path / "evaluation.json"
    subprocess.run([sys.executable, str(ROOT / "training" / "evaluate_experts.py"), "--experts", str(run),
                    "--base_model", str(tiny_base_dir), "--data", str(data), "--eval_fraction", "0.25",
                    "--max_length", "128", "--dose_response", "--discrimination", "quick",
                    "--discrimination_judge", "reader", "--json",
                    str(evaluation)],
                   check=True, capture_output=True, text=True, cwd=ROOT, timeout=900,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    result = json.loads(evaluation.read_text())
    assert result["split"]["dialogues"] == 4
    assert set(result["recognition"]["accuracy_by_mode"]) == {"experts+prompt", "experts", "prompt"}
    for judge in ("likelihood", "statement"):
        assert result["personality"][judge]["experts+prompt"]["of"] == 10
        assert result["profession"][judge]["prompt"]["of"] == 3
    curves = result["dose_response"]
    assert list(curves) == ["0.0", "0.5", "1.0", "1.5", "2.0"]
    # Strength 0 is the prompt alone, strength 1 the trained experts: the curve's ends are the measured modes.
    assert curves["0.0"]["recognition_accuracy"] == result["recognition"]["accuracy_by_mode"]["prompt"]
    assert curves["1.0"]["recognition_accuracy"] == result["recognition"]["accuracy_by_mode"]["experts+prompt"]
    for strength, mode in (("0.0", "prompt"), ("1.0", "experts+prompt")):  # the questionnaires', measured once
        measured = result["personality"]["statement"][mode]["poles"]
        assert curves[strength]["questionnaire_shift"]["statement"] == {p: v["shift"] for p, v in measured.items()}
    assert set(curves["2.0"]["questionnaire_shift"]) == {"likelihood", "statement"}
    discrimination = result["discrimination"]  # quick: two held-out prompts, all three conditions
    assert discrimination["settings"]["prompts"] == ["work-3", "weekend-3"] and discrimination["validation"] is None
    assert discrimination["settings"]["judge"] == "likelihood+reader"
    assert {f["condition"] for f in discrimination["figures"]} == {"experts+prompt", "experts", "prompt"}
    assert set(curves["2.0"]["questionnaire_shift"]["statement"]) == {
        "AGR_high", "AGR_low", "CON_high", "CON_low", "EXT_high", "EXT_low", "NEU_high", "NEU_low", "OPE_high",
        "OPE_low"}
    out = tmp_path / "card"
    subprocess.run([sys.executable, str(ROOT / "training" / "model_card.py"), "--run", str(run), "--evaluation",
                    str(evaluation), "--out", str(out)], check=True, capture_output=True, text=True, cwd=ROOT,
                   timeout=300)
    card = (out / "README.md").read_text()
    summary = json.loads((run / "training_summary.json").read_text())
    assert f"--data {data}" in card and "--gate sigmoid" in card and "--learning_rate 0.01" in card
    assert f"{summary['steps']} optimizer steps" in card and "`sigmoid` gate" in card
    assert "16 records kept" in card and "4 dialogues" in card
    assert "judge `likelihood`" in card and "judge `statement`" in card
    assert "## What readers see" in card and "profession named from experts-only replies" in card
    assert "judged by `likelihood+reader`" in card
    assert (out / "dose_response.png").stat().st_size > 0 and (out / "loss_curve.png").stat().st_size > 0
    weights = load_file(str(out / "adapter_model.safetensors"))
    assert all(v.dtype == torch.float16 for v in weights.values())
    # --previous keeps the rows of an earlier card (here one written before recipes.json existed), unmarked.
    old_card = tmp_path / "old_card"
    old_card.mkdir()
    old_row = "| an earlier recipe | 1.900 | 0.400 | 0.400 | 0.300 | 0.80 / 0.10 / 0.00 | 18 |"
    (old_card / "README.md").write_text(f"## Recipes tried\n\n| recipe | loss |\n|---|---|\n{old_row} **shipped** |"
                                        "\n\n## Measured\n| a | b |\n")
    subprocess.run([sys.executable, str(ROOT / "training" / "model_card.py"), "--run", str(run), "--evaluation",
                    str(evaluation), "--out", str(out), "--previous", str(old_card)], check=True, capture_output=True,
                   text=True, cwd=ROOT, timeout=300)
    rows = json.loads((out / "recipes.json").read_text())
    assert len(rows) == 2 and rows[0].endswith(" **shipped** |") and rows[1] == old_row + " |"
    assert old_row + " |" in (out / "README.md").read_text()
    subprocess.run([sys.executable, str(ROOT / "training" / "model_card.py"), "--run", str(run), "--evaluation",
                    str(evaluation), "--out", str(out), "--previous", str(out)], check=True, capture_output=True,
                   text=True, cwd=ROOT, timeout=300)
    assert json.loads((out / "recipes.json").read_text()) == rows  # the same run again: no duplicate row

    # A run that started from `run`'s experts (read from a copy, as from a shipped card): the card needs the
    # first run and gives both commands, the second reading the first one's output directory.
    copy, second = tmp_path / "copy", tmp_path / "second"
    subprocess.run([sys.executable, str(ROOT / "training" / "model_card.py"), "--run", str(run), "--evaluation",
                    str(evaluation), "--out", str(copy)], check=True, capture_output=True, text=True, cwd=ROOT,
                   timeout=300)
    train("--data", data, "--base_model", tiny_base_dir, "--output_dir", second, "--rank", 2, "--batch_size", 4,
          "--micro_batch_size", 2, "--num_epochs", 1, "--learning_rate", 1e-2, "--warmup_steps", 0,
          "--gate", "sigmoid", "--eval_fraction", 0.25, "--max_length", 128, "--init_experts", copy,
          "--neighbour_weight", 0.5, "--save_steps", 1)
    card_command = [sys.executable, str(ROOT / "training" / "model_card.py"), "--run", str(second), "--evaluation",
                    str(evaluation), "--out", str(tmp_path / "second_card")]
    refused = subprocess.run(card_command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert refused.returncode != 0 and "--init_run" in refused.stderr
    subprocess.run(card_command + ["--init_run", str(run)], check=True, capture_output=True, text=True, cwd=ROOT,
                   timeout=300)
    card = (tmp_path / "second_card" / "README.md").read_text()
    assert f"--output_dir {run} " in card and f"--output_dir {second} " in card and f"--init_experts {run}" in card
    assert "--neighbour_weight 0.5" in card and f"`{copy}`" in card  # the copy it read its start from
    assert "0.5 (beta 0.1)" in card  # the contrast's weight and beta in the recipe
    # A checkpoint of it can ship: its weights, and the card says which step (no held-out loss logged there).
    subprocess.run(card_command[:3] + [str(second / "checkpoint-1")] + card_command[4:] + ["--init_run", str(run)],
                   check=True, capture_output=True, text=True, cwd=ROOT, timeout=300)
    card = (tmp_path / "second_card" / "README.md").read_text()
    steps = json.loads((second / "training_summary.json").read_text())["steps"]
    assert f"step 1 of {steps}" in card  # which checkpoint shipped
    assert f"its step 1 of {steps} | – |" in card  # its row in the recipes table: no held-out loss there
    shipped = load_file(str(tmp_path / "second_card" / "adapter_model.safetensors"))
    at_step = load_file(str(second / "checkpoint-1" / "adapter_model.safetensors"))
    assert all(torch.equal(shipped[k], v.to(torch.float16)) for k, v in at_step.items())

    # A third run from that checkpoint, with two files of self-reports as extra data: the card needs the whole
    # chain, oldest first, and gives three training commands, the third after the commands that made its data.
    third = tmp_path / "third"
    extra = self_report.main(["--out", str(tmp_path / "sd.jsonl"), "--records", "4", "--formats", "self_description"])
    more = self_report.main(["--out", str(tmp_path / "digits.jsonl"), "--records", "3", "--formats", "digit"])
    train("--data", data, "--base_model", tiny_base_dir, "--output_dir", third, "--rank", 2, "--batch_size", 4,
          "--micro_batch_size", 2, "--num_epochs", 1, "--learning_rate", 1e-2, "--warmup_steps", 0,
          "--gate", "sigmoid", "--eval_fraction", 0.25, "--max_length", 128,
          "--init_experts", second / "checkpoint-1", "--save_steps", 1, "--extra_data", extra, more)
    third_card = card_command[:3] + [str(third)] + card_command[4:]
    for chain, complaint in (([second / "checkpoint-1"], "give the runs that made them first"),
                             ([run, run], "cannot follow the runs before it")):
        refused = subprocess.run(third_card + ["--init_run", *map(str, chain)], capture_output=True, text=True,
                                 cwd=ROOT, timeout=300)
        assert refused.returncode != 0 and complaint in refused.stderr
    subprocess.run(third_card + ["--init_run", str(run), str(second / "checkpoint-1")], check=True,
                   capture_output=True, text=True, cwd=ROOT, timeout=300)
    card = (tmp_path / "second_card" / "README.md").read_text()
    commands = list(dict.fromkeys(  # in order; the card gives them under Training and again under Reproduce
        line.strip() for line in card.splitlines() if line.strip().startswith("python training/train.py")))
    assert len(commands) == 3 and "--init_experts" not in commands[0]
    assert f"--init_experts {run}" in commands[1] and f"--init_experts {second}/checkpoint-1" in commands[2]
    assert "Run 1 (" in card and "Run 2 (" in card
    made_extra = f"python training/self_report.py --out {extra} --records 4 --seed 0"
    made_more = f"python training/self_report.py --out {more} --records 3 --seed 0"
    assert f"`{extra}` (`--extra_data`, 4 records" in card and f"`{more}` (`--extra_data`, 3 records" in card
    training = card.partition("## Training")[2].partition("\n## ")[0]
    for made in (made_extra, made_more):
        assert made in training and training.index(made) < training.index(f"--output_dir {third} ")
    assert f"--extra_data {extra} {more}" in commands[2]


def test_the_neighbour_contrast_is_a_ranking_loss_on_summed_reply_likelihoods():
    """Its terms equal those of separate forwards under the set and under its neighbour, and a few
    gradient steps on it widen the margin between them."""
    sys.path.insert(0, str(ROOT))
    from app.tiny_model import randomize_experts
    from hirpf.experts import ExpertConfig
    from hirpf.identities import IdentitySet
    from hirpf.inject import add_experts
    from hirpf.routing import use_identities
    from training.train import NeighbourContrast

    from testing_utils import tiny_llama

    model = tiny_llama(seed=3, dtype=torch.float64, layers=2)
    add_experts(model, ExpertConfig(rank=2, dropout=0.0, layout="layered"))
    randomize_experts(model, seed=4, scale=0.1)
    sets = [IdentitySet.parse("AGR_low,Doctor"), IdentitySet.parse("EXT_high")]
    pairs = torch.stack([s.index_pairs() for s in sets])
    g = torch.Generator().manual_seed(0)
    input_ids = torch.randint(3, 64, (2, 12), generator=g)
    labels = input_ids.clone()
    labels[:, :5] = -100  # the prompt carries no loss
    inputs = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "labels": labels}
    contrast = NeighbourContrast(weight=1.0, beta=0.5, seed=7)
    chooser = NeighbourContrast(1.0, 0.5, seed=7)  # the same random draws as `contrast`
    neighbours = [chooser.neighbour(s) for s in sets]
    assert all(n != s for n, s in zip(neighbours, sets))

    def reply_log_likelihoods(identities, labels=labels):
        with torch.no_grad(), use_identities(identities):
            logp = model(input_ids=input_ids).logits[:, :-1].log_softmax(-1)
        picked = logp.gather(-1, input_ids[:, 1:, None])[..., 0]
        return (picked * (labels[:, 1:] != -100)).sum(dim=1)

    own, other = reply_log_likelihoods(sets), reply_log_likelihoods(neighbours)
    loss = contrast.loss(model, dict(inputs), pairs, num_items_in_batch=None, accumulation=1)
    expected = -own.sum() / 14 + torch.nn.functional.softplus(-0.5 * (own - other)).mean()
    torch.testing.assert_close(loss.detach(), expected)
    assert contrast.last["margin"] == pytest.approx(float((own - other).mean()))

    # --loss_per_record: each row's mean over its own reply tokens (7 and 3 here), then the mean over rows.
    short = labels.clone()
    short[1, :9] = -100
    own, other = reply_log_likelihoods(sets, short), reply_log_likelihoods(neighbours, short)
    per_record = NeighbourContrast(weight=1.0, beta=0.5, seed=7)
    loss = per_record.loss(model, dict(inputs, labels=short), pairs, None, 1, per_record=True)
    expected = -(own / torch.tensor([7.0, 3.0])).mean() + torch.nn.functional.softplus(-0.5 * (own - other)).mean()
    torch.testing.assert_close(loss.detach(), expected)

    steps = NeighbourContrast(weight=1.0, beta=0.5, seed=7)
    steps.neighbour = lambda s: neighbours[sets.index(s)]  # the same neighbours every step
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for _ in range(10):
        optimizer.zero_grad()
        steps.loss(model, dict(inputs), pairs, None, 1).backward()
        optimizer.step()
    model.eval()
    grown = reply_log_likelihoods(sets) - reply_log_likelihoods(neighbours)
    assert (grown > own - other).all()


def test_a_run_can_start_from_earlier_experts_with_the_neighbour_contrast(tmp_path, tiny_base_dir):
    """--init_experts loads a finished run's experts (learning rate 0 leaves them as they were) and refuses
    experts of another shape; --neighbour_weight trains."""
    data = write_data(tmp_path / "data.json", n=12)
    first, second, third = tmp_path / "first", tmp_path / "second", tmp_path / "third"
    common = ["--data", data, "--base_model", tiny_base_dir, "--rank", 2, "--batch_size", 4, "--micro_batch_size", 2,
              "--num_epochs", 1, "--eval_steps", 100, "--warmup_steps", 0]
    train(*common, "--output_dir", first, "--learning_rate", 1e-2)
    train(*common, "--output_dir", second, "--learning_rate", 0, "--init_experts", first, "--neighbour_weight", 1)
    before, after = (load_file(str(d / "adapter_model.safetensors")) for d in (first, second))
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    train(*common, "--output_dir", third, "--learning_rate", 1e-2, "--init_experts", first, "--neighbour_weight", 1)
    trained = load_file(str(third / "adapter_model.safetensors"))
    assert any(not torch.equal(before[k], trained[k]) for k in before)
    per_record = tmp_path / "per_record"  # language modelling per record, without the contrast
    train(*common, "--output_dir", per_record, "--learning_rate", 1e-2, "--init_experts", first, "--loss_per_record")
    trained = load_file(str(per_record / "adapter_model.safetensors"))
    assert any(not torch.equal(before[k], trained[k]) for k in before)
    assert json.loads((per_record / "training_summary.json").read_text())["args"]["loss_per_record"] is True
    refused = subprocess.run([sys.executable, str(ROOT / "training" / "train.py"),
                              *map(str, [*common, "--rank", 4, "--output_dir", tmp_path / "refused",
                                         "--init_experts", first])],
                             capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert refused.returncode != 0 and "r=4" in refused.stderr and "r=2" in refused.stderr


def test_a_profession_phase_trains_only_the_profession_experts_on_records_with_one(tmp_path, tiny_base_dir):
    """--train_groups professions leaves every trait layer (experts and router) as loaded and moves the
    profession layers; --train_records with_profession keeps 3 of every 4 records here; --neighbour_edits
    profession contrasts only profession edits; a layout that mixes the groups in a layer is refused."""
    data = write_data(tmp_path / "data.json", n=16)
    first, phase = tmp_path / "first", tmp_path / "phase"
    common = ["--data", data, "--base_model", tiny_base_dir, "--rank", 2, "--batch_size", 4, "--micro_batch_size", 2,
              "--num_epochs", 1, "--eval_steps", 100, "--warmup_steps", 0, "--insert_mode", "alternate"]
    train(*common, "--output_dir", first, "--learning_rate", 1e-2)
    train(*common, "--output_dir", phase, "--learning_rate", 1e-2, "--init_experts", first,
          "--train_groups", "professions", "--train_records", "with_profession", "--neighbour_weight", 1,
          "--neighbour_edits", "profession", "--experts_only_share", 1)
    before, after = (load_file(str(d / "adapter_model.safetensors")) for d in (first, phase))
    layers = read_config(first)[0].groups_for_layer
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    trait_keys = {k for k in before if "traits" in layer_group(k, layers)}
    assert trait_keys and not moved & trait_keys
    assert moved and moved <= set(before) - trait_keys
    summary = json.loads((phase / "training_summary.json").read_text())
    held_out = 2  # --eval_fraction 0.1 of 16, drawn before the filter
    assert summary["train_samples"] < 16 - held_out and summary["args"]["neighbour_edits"] == "profession"
    refused = subprocess.run([sys.executable, str(ROOT / "training" / "train.py"),
                              *map(str, [*common[:-1], "layered", "--output_dir", tmp_path / "refused",
                                         "--train_groups", "professions"])],
                             capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert refused.returncode != 0 and "--train_groups professions" in refused.stderr


def test_a_trait_phase_passes_over_micro_batches_that_reach_no_trait_expert(tmp_path, tiny_base_dir):
    """With --train_groups traits, a micro-batch of profession-only sets has no gradient; it must not stop the
    run (the trait phase t2 failed so at its last step): the trait experts learn, the profession ones stay."""
    records = [{"dialog": [{"role": "user", "content": f"{question} ({i})"}, {"role": "assistant", "content": answer}],
                "active_adapters": adapters}
               for i in range(12) for adapters, question, answer in
               [(["Doctor"], "Does the clinic open early?", "Yes, rounds at seven."),
                (["EXT_low"], "Coming to the party?", "I will stay home and read.")][i % 2:i % 2 + 1]]
    data = tmp_path / "data.json"
    data.write_text(json.dumps(records))
    first, phase = tmp_path / "first", tmp_path / "phase"
    common = ["--data", data, "--base_model", tiny_base_dir, "--rank", 2, "--batch_size", 2, "--micro_batch_size", 1,
              "--num_epochs", 1, "--eval_steps", 100, "--warmup_steps", 0, "--insert_mode", "alternate",
              "--learning_rate", 1e-2]
    train(*common, "--output_dir", first)
    train(*common, "--output_dir", phase, "--init_experts", first, "--train_groups", "traits")
    before, after = (load_file(str(d / "adapter_model.safetensors")) for d in (first, phase))
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    layers = read_config(first)[0].groups_for_layer
    assert moved and all("traits" in layer_group(k, layers) for k in moved)


def layer_group(key: str, groups_for_layer) -> str:
    """'traits' or 'professions': the group the decoder layer in a checkpoint key holds (alternate layout)."""
    index = int(key.split("layers.")[1].split(".")[0])
    (group,) = groups_for_layer(index)
    return "traits" if "AGR_high" in group else "professions"


def test_the_profession_neighbour_contrast_changes_or_removes_only_the_profession():
    from hirpf.identities import IdentitySet
    from training.train import NeighbourContrast

    contrast = NeighbourContrast(1.0, 0.1, seed=0, edits="profession")
    drawn = {contrast.neighbour(IdentitySet.parse("AGR_low,NEU_high,Doctor")) for _ in range(60)}
    assert drawn == {IdentitySet.parse(s) for s in ("AGR_low,NEU_high,Artist", "AGR_low,NEU_high,Programmer",
                                                     "AGR_low,NEU_high")}
    assert contrast.neighbour(IdentitySet.parse("AGR_low")) == IdentitySet.parse("AGR_low")  # nothing to edit
    with pytest.raises(SystemExit, match="--neighbour_edits"):
        NeighbourContrast(1.0, 0.1, seed=0, edits="poles")


def test_the_trait_neighbour_contrast_flips_or_removes_only_a_pole():
    from hirpf.identities import IdentitySet
    from training.train import NeighbourContrast

    contrast = NeighbourContrast(1.0, 0.1, seed=0, edits="traits")
    drawn = {contrast.neighbour(IdentitySet.parse("AGR_low,NEU_high,Doctor")) for _ in range(80)}
    assert drawn == {IdentitySet.parse(s) for s in ("AGR_high,NEU_high,Doctor", "AGR_low,NEU_low,Doctor",
                                                     "NEU_high,Doctor", "AGR_low,Doctor")}
    assert contrast.neighbour(IdentitySet.parse("Doctor")) == IdentitySet.parse("Doctor")  # no pole to edit


def test_a_card_says_when_a_resumed_run_did_not_keep_its_earlier_time():
    from training.model_card import minutes_text

    assert minutes_text({"seconds": 90}) == "1.5 minutes"  # a summary written before resumes kept their time
    assert minutes_text({"seconds": 90, "seconds_known": True}) == "1.5 minutes"
    assert minutes_text({"seconds": 90, "seconds_known": False}).endswith("after its resume (the time before was "
                                                                          "not kept)")
