"""The paper's grid as one resumable command: `python -m advss_tf.study --study=paper --scale=... --seeds=N
--workdir=DIR`, then `python -m advss_tf.study report --workdir=DIR` (docs/study.md).

catalogue.py declares the studies (rows, questions) and the scales; plan.py turns them into runs of the binaries;
runner.py runs them (resuming, K at once, or as SLURM array jobs); statistics.py and report.py give the answers.
"""
