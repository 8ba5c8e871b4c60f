"""Would choosing the rewritten latents by their effect on CE make `latent_zero − coder` significant at mini size?

The mini task's CE quantities cannot order methods because deleting its 16 latents barely moves CE at the
scored position. This measures the alternative rule: per latent, the mean CE increase when that latent alone
is zeroed at the last position of the detection pool's windows (never the test split), over the same pool of
latents the task draws from (firing on >= `min_fire_rate` of the activation sample); the `count` largest are
the CE-selected set. Then, on the task's test split, `CE(latent_zero) − CE(coder)` for that set and for the
task's own latents, each with a 95% percentile-bootstrap CI over test contexts.

    python benchmarks/ce_selected_latents.py --task smollm2-135m-l8-offline-mini

About two minutes on 2 CPU cores (SmolLM2-135M, 300 windows x 32 single-latent ablations).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="smollm2-135m-l8-offline-mini")
    ap.add_argument("--count", type=int, default=0, help="latents to select (default: the task's count)")
    ap.add_argument("--draws", type=int, default=10000)
    args = ap.parse_args(argv)

    import torch

    from harness.data.prepare import prepare
    from harness.io import batch_size
    from harness.model.patch import Patcher
    from harness.score.metrics import bootstrap_indices, mean_ci
    from harness.task.inputs import TaskInputs
    from harness.task.spec import load_task

    spec = load_task(args.task)
    inputs = TaskInputs(spec, "cpu")
    prep = prepare(spec, inputs=inputs)
    model, _ = inputs.subject()
    coder = inputs.coder()
    BATCH = batch_size()
    count = args.count or len(prep.rewritten)
    patcher = Patcher(model, spec.coder.hookpoint, spec.coder.kind)

    def ablation_effects(windows: np.ndarray) -> np.ndarray:
        """Mean over windows of CE(latent j zeroed) − CE(coder), for every latent (0 where it never fires)."""
        total = np.zeros(coder.num_latents)
        with torch.inference_mode():
            for s in range(0, len(windows), BATCH):
                ids = torch.from_numpy(windows[s:s + BATCH])
                with patcher.prefix(ids[:, :-1]) as h:
                    last = h.capture(ids[:, -1])
                    acts, idx = coder.encode(last.x)
                    z = coder.dense(acts, idx)
                    reps = [coder.decode_dense(z, last.x)]
                    rows = torch.arange(len(ids))
                    for slot in range(idx.shape[1]):   # zero each row's slot-th active latent
                        zz = z.clone()
                        zz[rows, idx[:, slot]] = 0
                        reps.append(coder.decode_dense(zz, last.x))
                    ce = h.ce_batch(reps, ids[:, -1]).double().numpy()
                for slot in range(idx.shape[1]):
                    np.add.at(total, idx[:, slot].numpy(), ce[slot + 1] - ce[0])
        return total / len(windows)

    def zero_minus_coder(latents: np.ndarray) -> np.ndarray:
        windows = prep.splits["test"]
        out = []
        lat = torch.as_tensor(latents)
        with torch.inference_mode():
            for s in range(0, len(windows), BATCH):
                ids = torch.from_numpy(windows[s:s + BATCH])
                with patcher.prefix(ids[:, :-1]) as h:
                    last = h.capture(ids[:, -1])
                    z = coder.dense(*coder.encode(last.x))
                    zz = z.clone()
                    zz[:, lat] = 0
                    ce = h.ce_batch([coder.decode_dense(z, last.x), coder.decode_dense(zz, last.x)],
                                    ids[:, -1]).double().numpy()
                out.append(ce[1] - ce[0])
        return np.concatenate(out)

    det = prep.splits["detection"]
    effect = ablation_effects(det)
    pool = np.flatnonzero((prep.table.fire_rate > 0) & (prep.table.fire_rate >= spec.latents.min_fire_rate))
    chosen = np.sort(pool[np.argsort(-effect[pool], kind="stable")[:count]])
    boot = bootstrap_indices(len(prep.splits["test"]), args.draws, spec.scoring.seed)
    print(f"task {spec.id}: {len(det)} selection windows (detection pool), {len(prep.splits['test'])} test contexts")
    for name, lat in (("task's latents (" + spec.latents.rule + ")", prep.rewritten), ("CE-selected", chosen)):
        d = zero_minus_coder(np.asarray(lat))
        e = mean_ci(d, boot)
        print(f"  {name:28} CE(latent_zero) - CE(coder) = {e.value:+.4f} [{e.lo:+.4f}, {e.hi:+.4f}] nats; "
              f"selection-pool effect {effect[lat].sum():+.4f}")
    print(f"  CE-selected latents: {chosen.tolist()}; overlap with the task's: "
          f"{len(set(chosen.tolist()) & set(int(j) for j in prep.rewritten))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
