"""Train the ``absclip-demo`` model: a 4.2 M-parameter open_clip ViT, contrastively, on generated scenes.

    PYTHONPATH=src python scripts/demo/train.py --out src/absclip/assets/demo

Fixed seeds, CPU, two threads. Every batch is a fresh slice of the scene stream (scene ``i`` of seed
``--seed``), so a run is a pure function of its arguments up to the float non-determinism of the
CPU kernels. Each batch holds ``--batch`` images and one caption per class (a template drawn per
step); the loss is CLIP's symmetric cross-entropy with every image of a class a positive of its
caption. Writes ``absclip-demo.json`` (the open_clip config) and ``absclip-demo.safetensors``
(fp16 state dict) every ``--save-every`` steps and at the end, and logs loss and a held-out
global accuracy to stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from absclip.demo.scenes import CLASSES, TRAIN_SIZES, make_scene

CONFIG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 224, "layers": 4, "width": 128, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
}
NAME = "absclip-demo"
#: caption templates the text tower learns; the shipped descriptions are worded differently
TEMPLATES = (
    "a photo of a {}.", "a {}.", "a photo of the {}.", "a picture of a {}.", "a {} shape.", "a small {}.",
    "a large {}.", "a {} on a cluttered background.", "an image with a {}.", "a drawing of a {}.", "{}",
    "a photo of a small {}.", "a close-up photo of a {}.", "a {} among grey shapes.",
)
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def build_model(patch_dropout: float = 0.0) -> torch.nn.Module:
    """The open_clip CLIP of :data:`CONFIG`; ``patch_dropout`` (training only, as in FLIP) halves the cost at 0.5."""
    import open_clip

    return open_clip.CLIP(embed_dim=CONFIG["embed_dim"], text_cfg=CONFIG["text_cfg"],
                          vision_cfg={**CONFIG["vision_cfg"], "patch_dropout": patch_dropout})


def to_tensor(images: list) -> torch.Tensor:
    arr = np.stack([np.asarray(im, dtype=np.float32) / 255.0 for im in images])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2)
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


def batch(seed: int, start: int, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Scenes ``start..start+n-1`` at the model's input size; 30% rendered smaller and upscaled (softer)."""
    from PIL import Image

    size = CONFIG["vision_cfg"]["image_size"]
    images, labels = [], []
    for i in range(start, start + n):
        side = size if rng.uniform() < 0.7 else int(rng.integers(size * 3 // 5, size))
        s = make_scene(seed, i, sizes=TRAIN_SIZES, size=side)
        images.append(s.image if side == size else s.image.resize((size, size), Image.BICUBIC))
        labels.append(s.label)
    return to_tensor(images), torch.tensor(labels)


def loss_fn(img: torch.Tensor, txt: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor,
            head: torch.nn.Module | None = None) -> torch.Tensor:
    """CLIP's symmetric loss (all images of a class are positives of its caption), plus ``head``'s cross-entropy.

    Without the head, both towers start with the five shapes of a colour nearly alike and the
    contrastive gradient that would tell them apart is tiny: training sits on a colour-only plateau
    (loss ~2.19, one class in five). A linear head on the image embedding (not shipped) gives the
    image tower the shape signal from the first step; the text tower then follows.
    """
    img = F.normalize(img, dim=-1)
    logits = scale.exp() * img @ F.normalize(txt, dim=-1).T  # [B, C]
    i2t = F.cross_entropy(logits, labels)
    present = torch.unique(labels)
    target = (labels[None, :] == present[:, None]).float()  # [P, B]: every image of the class is a positive
    t2i = -(target / target.sum(1, keepdim=True) * logits.T[present].log_softmax(-1)).sum(1).mean()
    loss = (i2t + t2i) / 2
    return loss + F.cross_entropy(head(img), labels) if head is not None else loss


@torch.no_grad()
def global_accuracy(model: torch.nn.Module, tokenizer, seed: int, n: int) -> float:  # noqa: ANN001
    model.eval()
    txt = F.normalize(model.encode_text(tokenizer([f"a photo of a {c}." for c in CLASSES])), dim=-1)
    correct = 0
    for start in range(0, n, 50):
        x, y = batch(seed, start, min(50, n - start), np.random.default_rng(0))
        correct += int(((F.normalize(model.encode_image(x), dim=-1) @ txt.T).argmax(-1) == y).sum())
    model.train()
    return correct / n


def save(model: torch.nn.Module, out: Path) -> None:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    (out / f"{NAME}.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    tmp = out / f".{NAME}.safetensors.tmp"
    save_file(sd, str(tmp))
    tmp.replace(out / f"{NAME}.safetensors")


def main(argv: list[str] | None = None) -> list[float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=4500)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--head", action=argparse.BooleanOptionalAction, default=True,
                   help="add the auxiliary class head during training (see loss_fn)")
    p.add_argument("--patch-dropout", type=float, default=0.0, help="fraction of patch tokens dropped per image")
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--out", type=Path, default=None, help="where to write the config and weights (None: nowhere)")
    args = p.parse_args(argv)

    import open_clip

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    model = build_model(args.patch_dropout)
    tokenizer = open_clip.SimpleTokenizer(context_length=CONFIG["text_cfg"]["context_length"])
    print(f"params: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M", flush=True)
    head = torch.nn.Linear(CONFIG["embed_dim"], len(CLASSES)) if args.head else None
    params = [*model.named_parameters(), *(head.named_parameters() if head else [])]
    decay = [p for n, p in params if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in params if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    rng = np.random.default_rng([args.seed, 1])
    losses: list[float] = []
    t0 = time.time()
    for step in range(args.steps):
        lr = args.lr * min(1.0, (step + 1) / args.warmup) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = batch(args.seed, step * args.batch, args.batch, rng)
        texts = [TEMPLATES[int(rng.integers(len(TEMPLATES)))].format(c) for c in CLASSES]
        loss = loss_fn(model.encode_image(x), model.encode_text(tokenizer(texts)), y, model.logit_scale, head)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        losses.append(loss.item())
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step} loss {np.mean(losses[-10:]):.4f} lr {lr:.2e} {time.time() - t0:.0f}s", flush=True)
        if args.out and ((step + 1) % args.save_every == 0 or step == args.steps - 1):
            save(model, args.out)
        if args.eval_every and ((step + 1) % args.eval_every == 0 or step == args.steps - 1):
            print(f"step {step} held-out global acc1 {global_accuracy(model, tokenizer, 999, 200):.3f}", flush=True)
    print(f"done: {args.steps} steps in {time.time() - t0:.0f}s, final loss {np.mean(losses[-20:]):.4f}", flush=True)
    return losses


if __name__ == "__main__":
    main()
