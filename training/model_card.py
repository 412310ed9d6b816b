"""Package a training run as shipped experts: float16 weights, the config, a loss curve and a model card.

    python training/model_card.py --run RUN_DIR --evaluation EVAL.json --out models/smollm2-135m-experts
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from PIL import Image, ImageDraw
from safetensors.torch import load_file, save_file
import torch

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hirpf.checkpoint import CONFIG_FILE, WEIGHTS_FILE


def loss_curve(history: list[dict], path: Path, size=(720, 420)) -> None:
    """Train and eval loss against the step, drawn with PIL (no plotting library needed)."""
    train = [(h["step"], float(h["loss"])) for h in history if "loss" in h]
    evals = [(h["step"], float(h["eval_loss"])) for h in history if "eval_loss" in h]
    points = train + evals
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = 70, 30, size[0] - 20, size[1] - 50
    x_max = max(s for s, _ in points) or 1
    y_min, y_max = min(v for _, v in points), max(v for _, v in points)
    y_min, y_max = y_min - 0.05 * (y_max - y_min + 1e-6), y_max + 0.05 * (y_max - y_min + 1e-6)

    def xy(step, value):
        return (left + (right - left) * step / x_max, bottom - (bottom - top) * (value - y_min) / (y_max - y_min))

    draw.rectangle([left, top, right, bottom], outline="black")
    for k in range(5):
        value = y_min + (y_max - y_min) * k / 4
        y = xy(0, value)[1]
        draw.line([left - 4, y, left, y], fill="black")
        draw.text((8, y - 6), f"{value:.3f}", fill="black")
    for k in range(5):
        step = x_max * k / 4
        x = xy(step, y_min)[0]
        draw.line([x, bottom, x, bottom + 4], fill="black")
        draw.text((x - 8, bottom + 8), f"{step:.0f}", fill="black")
    draw.text(((left + right) / 2 - 20, size[1] - 22), "step", fill="black")
    for series, colour, label in ((train, "royalblue", "train loss"), (evals, "darkorange", "eval loss")):
        if len(series) > 1:
            draw.line([xy(*p) for p in series], fill=colour, width=2)
        for p in series:
            x, y = xy(*p)
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
    draw.text((right - 150, top + 8), "train loss", fill="royalblue")
    draw.text((right - 150, top + 24), "eval loss", fill="darkorange")
    image.save(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="the trainer's --output_dir")
    ap.add_argument("--evaluation", required=True, help="JSON written by training/evaluate_experts.py --json")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    run, out = Path(args.run), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = json.loads((run / "training_summary.json").read_text())
    evaluation = json.loads(Path(args.evaluation).read_text())
    shutil.copy(run / CONFIG_FILE, out / CONFIG_FILE)
    weights = {k: v.to(torch.float16) for k, v in load_file(str(run / WEIGHTS_FILE)).items()}
    save_file(weights, str(out / WEIGHTS_FILE), metadata={"format": "hirpf-experts"})
    loss_curve(summary["log_history"], out / "loss_curve.png")
    (out / "training_summary.json").write_text(json.dumps({k: v for k, v in summary.items()}, indent=2, default=str))
    (out / "evaluation.json").write_text(json.dumps(evaluation, indent=2))
    a = summary["args"]
    acc = evaluation["accuracy_by_mode"]
    card = f"""# HIRPF identity experts for SmolLM2-135M-Instruct (embedded model)

Thirteen LoRA identity experts (ten Big Five trait poles, three professions) in the `alternate` layout:
trait experts on the even decoder layers, profession experts on the odd ones, on `{a['target_modules']}`,
rank {a['rank']}, alpha {a['alpha']}, dropout {a['dropout']}, routers trained jointly, hard mask on. Stored
in float16 ({(out / WEIGHTS_FILE).stat().st_size / 2**20:.1f} MiB); they load into the float32 model.
The app and `python -m hirpf chat` use them by default on the embedded model.

## Data and split
`../shared/his/identity_dialogues.json` (570 public HIS dialogues; read from there, not copied).
{summary['train_samples'] + summary['eval_samples']} dialogues pass the identity rules; 9 records that give
both poles of one trait were reported and skipped (`--on_invalid skip`). Held out for evaluation:
{summary['eval_samples']} dialogues ({a['eval_fraction']:.0%}, shuffled with seed {a['seed']}); trained on
{summary['train_samples']}. Dialogues longer than {a['max_length']} tokens lose whole turns from the end.

## Training
`python training/train.py --data ../shared/his/identity_dialogues.json --on_invalid skip --output_dir RUN
--rank {a['rank']} --alpha {a['alpha']:g} --dropout {a['dropout']} --insert_mode {a['insert_mode']} --batch_size {a['batch_size']}
--micro_batch_size {a['micro_batch_size']} --num_epochs {a['num_epochs']:g} --learning_rate {a['learning_rate']:g}
--warmup_steps {a['warmup_steps']} --max_length {a['max_length']} --eval_steps {a['eval_steps']} --save_steps {a['save_steps']}
--logging_steps {a['logging_steps']} --seed {a['seed']}`

{summary['steps']} optimizer steps, {summary['seconds'] / 60:.1f} minutes on 2 CPU cores
({summary['tokens_per_s']:.0f} tokens/s), {summary['trainable_parameters']:,} trainable parameters.
Mean train loss over the run {summary.get('mean_train_loss', summary.get('final_train_loss')):.3f}; final held-out loss
{summary['final_eval_loss']:.3f}.

![loss curve](loss_curve.png)

## Evaluation: do the experts carry identity?
For each of the {evaluation['dialogues']} held-out dialogues, the assistant-token log-likelihood under its
true identity set is compared with every single-edit neighbour (a pole flipped, the profession changed or
removed); a hit when the true set is the most likely. Same base model, two conditionings:

| conditioning | accuracy | mean margin (nats) |
|---|---|---|
| experts + identity prompt | {acc['experts+prompt']:.3f} | {evaluation['mean_margin_by_mode']['experts+prompt']:.2f} |
| identity prompt alone | {acc['prompt']:.3f} | {evaluation['mean_margin_by_mode']['prompt']:.2f} |

Reproduce: `python training/evaluate_experts.py --experts models/smollm2-135m-experts` (details per
dialogue in `evaluation.json`).
"""
    (out / "README.md").write_text(card)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
