"""The CIFAR-style study on Fashion-MNIST: the two-conv CNN baseline against the tiny ViT at patch sizes 2, 4 and 7
(img_size 28: grids of 14x14, 7x7 and 4x4) with position embedding none / learned / sin-cos, each point over seeds,
on a short schedule of the DeiT III recipe (the same loop, loss, LAMB and augmentation for the CNN and the ViTs).

It is one sweep (`vitartifacts.sweep.run_sweep`: every point an ordinary run, executed through the papermill
training notebook, resumable) and its results table (`vitartifacts.results.write_results`: top-1 over seeds with a
bootstrap 95% interval, the difference to the CNN with its interval, and the artifact measures of the ViTs' last
probe epoch; NaN for the CNN, which has no tokens). Published Fashion-MNIST baselines for comparison: the two-conv
CNN about 0.916, with batch norm about 0.934.

The full study (19 points x 3 seeds) takes hours on a CPU; run it small first:

    .venv/bin/python bench/fashion_study.py                               # the study: 3 seeds, 10 epochs
    .venv/bin/python bench/fashion_study.py --seeds 1 --epochs 1 --patch_sizes 7 --pos_embeds learn --out /tmp/fm

`--out DIR` is the folder the sweep lives in (DIR/fashion-study/ holds the runs, results.csv, results.md and
study.json with the environment); running again resumes, skipping the points that are done.
"""
import argparse, json

from vitartifacts.results import write_results
from vitartifacts.runs import atomic_write_text
from vitartifacts.sweep import load_sweep, run_sweep
from _common import environment, finish, header

PATCH_SIZES, POS_EMBEDS = (2, 4, 7), ('none', 'learn', 'sincos')


def study_spec(epochs: int = 10, seeds: int = 3, patch_sizes=PATCH_SIZES, pos_embeds=POS_EMBEDS, cnn: bool = True) -> dict:
    "The sweep spec: a CNN point and a ViT point per patch size and position embedding, each over `seeds` seeds."
    base = dict(dataset='fashion-mnist', img_size=28, patch_size=7, size='tiny', epochs=epochs, batch_size=128,
                warmup_epochs=min(1, epochs / 2), analysis_freq=epochs, probe_size=64, wandb_mode='disabled',
                save_freq=0, log_freq=100)
    vits = [dict(model='vanilla', patch_size=p, pos_embed=pe) for p in patch_sizes for pe in pos_embeds]
    return dict(name='fashion-study', base=base, points=([dict(model='cnn')] if cnn else []) + vits,
                seeds=list(range(seeds)), **(dict(baseline=dict(model='cnn')) if cnn else {}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--epochs', type=int, default=10, help='training epochs of every run (default: 10)')
    parser.add_argument('--seeds', type=int, default=3, help='seeds per point, 0..N-1 (default: 3)')
    parser.add_argument('--out', default='runs', metavar='DIR', help='folder holding the sweep folder fashion-study/ (default: runs)')
    parser.add_argument('--patch_sizes', type=int, nargs='+', default=list(PATCH_SIZES), help='ViT patch sizes (default: 2 4 7)')
    parser.add_argument('--pos_embeds', nargs='+', default=list(POS_EMBEDS), help='ViT position embeddings (default: none learn sincos)')
    parser.add_argument('--no_cnn', action='store_true', help='leave out the CNN baseline')
    args = parser.parse_args()
    env = environment('cpu')
    print(header(env))
    sweep = load_sweep(study_spec(args.epochs, args.seeds, args.patch_sizes, args.pos_embeds, not args.no_cnn), args.out)
    states = run_sweep(sweep)
    failed = [name for name, state in states.items() if state != 'done']
    if failed: print(f"{len(failed)} of {len(states)} points did not finish ({', '.join(failed)}); see {sweep.folder}/logs/.")
    table, csv, md = write_results(sweep)
    print(md.read_text())
    finish(env)
    atomic_write_text(sweep.folder / 'study.json', json.dumps(dict(env=env, spec=sweep.spec, states=states,
                                                                   results=json.loads(table.to_json(orient='index'))), indent=1))
    print(f"results: {csv}, {md}; {env.get('seconds', 0):.0f} s")


if __name__ == '__main__':
    main()
